"""A convolutional stem in place of the patchify convolution (Xiao et al. 2021, "Early convolutions help
transformers see better").

    image (B, in_chans, H, W)
      -> n x [3x3 conv, stride 2 -> BatchNorm -> ReLU]     (B, channels[-1], H / 2**n, W / 2**n)
      -> 1x1 conv (with bias) to the ViT width             (B, C, H / 2**n, W / 2**n)
      -> one token per position                            (B, H*W / 4**n, C)

The paper's ViT_C: the single p x p patchify convolution is replaced by a few stride-2 3x3
convolutions and one 1x1 projection, which trains faster and is less sensitive to the optimiser
at about the same cost. Each token then sees a receptive field that overlaps its neighbours'
instead of one hard-cut patch, which matters most on small images with few tokens.

The stem is timm's `ConvStem` (`timm.models.vision_transformer_hybrid`), so the parameter names
(`patch_embed.backbone.0.conv`, `patch_embed.backbone.0.bn`, ..., the 1x1 projection
`patch_embed.backbone.{n}.conv`) are those of timm's `VisionTransformer` built with
``embed_layer=partial(HybridEmbed, backbone=ConvStem(...), proj=False)``, and its state dict loads
into that model unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer_hybrid import ConvStem
from torch import nn

from .patch_embed import tokenise


def conv_stem_stride(channels: Sequence[int]) -> int:
    """Total stride of a conv stem, i.e. the ViT patch size it stands for: each 3x3 conv halves the image."""
    return 2 ** len(channels)


def conv_stem_error(channels: Sequence[int], patch_size: int | None) -> str | None:
    """Why `channels` cannot be a conv stem for `patch_size` (None: any), in one line; None when it can.

    For config checks, which report the problem with the field names before anything is built.
    """
    if not channels or min(channels) < 1:
        return f"conv_stem={list(channels)} must list positive channel counts, e.g. [24, 48, 96] (or be null)"
    stride = conv_stem_stride(channels)
    if patch_size not in (None, stride):
        return (f"patch_size={patch_size} must equal the conv_stem's stride {stride} (2**{len(channels)}) "
                f"(or be null to take it)")
    return None


def conv_stem_layers(channels: Sequence[int], in_chans: int, embed_dim: int) -> ConvStem:
    """timm's `ConvStem` for `channels` stride-2 3x3 convolutions (BatchNorm + ReLU each) and a 1x1 projection.

    The last layer is the 1x1 convolution to `embed_dim` with a bias and no norm or activation
    (timm's ConvStem leaves its last layer plain), so the stem ends in the token projection.

    Args:
        channels: output channels of the 3x3 stride-2 convolutions, e.g. (24, 48, 96).
        in_chans: image channels.
        embed_dim: token channels C.
    """
    depth = len(channels)
    return ConvStem(
        in_chans=in_chans,
        depth=depth + 1,
        channels=(*channels, embed_dim),
        kernel_size=(3,) * depth + (1,),
        stride=(2,) * depth + (1,),
        # "" = timm's static symmetric padding: 1 for a 3x3 stride-2 conv (H -> ceil(H/2)), 0 for the 1x1.
        padding="",
    )


class ConvStemEmbed(nn.Module):
    """Tokenise an image with stride-2 3x3 convolutions and a 1x1 projection (see the module docstring).

    Args:
        channels: output channels of the 3x3 stride-2 convolutions; the stride (the ViT's patch
            size) is 2**len(channels), e.g. (24, 48, 96) -> stride 8.
        in_chans: image channels.
        embed_dim: token channels C.
        dynamic_img_pad: zero-pad inputs whose size is not divisible by the stride (bottom and
            right) instead of failing.
    """

    def __init__(
        self,
        channels: Sequence[int],
        in_chans: int,
        embed_dim: int,
        dynamic_img_pad: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(
                f"conv_stem={channels} must list at least one positive channel count, e.g. (24, 48, 96)"
            )
        self.channels = channels
        self.in_chans = in_chans
        self.dynamic_img_pad = dynamic_img_pad
        self.backbone = conv_stem_layers(channels, in_chans, embed_dim)

    @property
    def stride(self) -> int:
        """Total stride: every 3x3 convolution halves the image."""
        return conv_stem_stride(self.channels)

    @property
    def proj(self) -> nn.Conv2d:
        """The final 1x1 convolution to tokens (the ViT's "patch embedding" projection; JAX init targets it)."""
        return self.backbone[-1].conv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], dict[str, torch.Tensor]]:
        """Tokenise an image batch.

        Args:
            x: images (B, in_chans, H, W), H and W divisible by `stride` (or padded when
                `dynamic_img_pad`).

        Returns:
            tokens (B, h*w, C) in row-major order, the grid (h, w) = (H/stride, W/stride), and an
            empty dict (the stem's maps are not offered as skips).
        """
        return tokenise(x, self.backbone, self.in_chans, self.stride, self.dynamic_img_pad)
