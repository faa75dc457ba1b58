"""The hybrid ResNetV2 + ViT patch embedding (R50+ViT-B/16, the TransUNet encoder).

A ResNetV2 with weight-standardised convolutions and GroupNorm (BiT style, no pre-activation)
turns the image into a stride-16 feature map; a 1x1 convolution projects it to the ViT width,
and each position of that map is one token. The CNN's earlier maps are the skip connections a
U-Net style decoder needs.

The CNN is built from timm's ResNetV2 blocks with "same" padding, as the JAX originals, so
the parameter names (`patch_embed.backbone.stem.conv`, `...stages.0.blocks.0.conv1`, ...) are
those of timm's `vit_base_r50_s16_224` and its checkpoints load unchanged.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from torch import nn

from .patch_embed import check_image_batch, pad_to_multiple

STEM_CHANNELS = 64
STAGE_BASE_CHANNELS = 256  # stage i outputs 256 * 2**i channels (bottleneck expansion 4)


class HybridEmbed(nn.Module):
    """ResNetV2 stem and stages, then a 1x1 projection to tokens.

    With `layers=(3, 4, 9)` at 224x224 the skip maps are 64x112x112 ("stem", stride 2),
    256x56x56 ("stages.0", stride 4) and 512x28x28 ("stages.1", stride 8); the last stage
    gives 1024x14x14 (stride 16), projected to `embed_dim` tokens on a 14x14 grid.

    Args:
        layers: bottleneck blocks per ResNet stage; the total stride is 4 * 2**(len(layers)-1).
        in_chans: image channels.
        embed_dim: token channels C.
        dynamic_img_pad: zero-pad inputs whose size is not divisible by the stride.
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        in_chans: int,
        embed_dim: int,
        dynamic_img_pad: bool = False,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("hybrid_layers must name at least one ResNet stage, e.g. (3, 4, 9)")
        self.in_chans = in_chans
        self.dynamic_img_pad = dynamic_img_pad
        self.layers = tuple(layers)
        self.backbone = ResNetV2(
            layers=list(layers),
            num_classes=0,
            global_pool="",
            in_chans=in_chans,
            preact=False,
            stem_type="same",
            conv_layer=partial(StdConv2dSame, eps=1e-8),
        )
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=1, stride=1)

    @property
    def stride(self) -> int:
        # The stem halves twice (conv, max-pool); every stage after the first halves once.
        return 4 * 2 ** (len(self.layers) - 1)

    def skip_specs(self) -> dict[str, tuple[int, int]]:
        """Channels and stride of each skip map, keyed by the module that produces it."""
        specs = {"stem": (STEM_CHANNELS, 2)}
        for index in range(len(self.layers) - 1):
            specs[f"stages.{index}"] = (STAGE_BASE_CHANNELS * 2**index, 4 * 2**index)
        return specs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], dict[str, torch.Tensor]]:
        """Tokenise an image batch through the CNN.

        Args:
            x: images (B, in_chans, H, W), H and W divisible by `stride`.

        Returns:
            tokens (B, h*w, C) with (h, w) = (H/stride, W/stride), the grid (h, w), and the skip
            maps {"stem": (B, 64, H/2, W/2), "stages.0": (B, 256, H/4, W/4), ...}.
        """
        check_image_batch(x, self.in_chans, self.stride, self.dynamic_img_pad)
        if self.dynamic_img_pad:
            x = pad_to_multiple(x, self.stride)
        stem = self.backbone.stem
        x = stem.norm(stem.conv(x))  # conv 7x7/2 + GroupNorm + ReLU
        skips = {"stem": x}
        x = stem.pool(x)
        last = len(self.backbone.stages) - 1
        for index, stage in enumerate(self.backbone.stages):
            x = stage(x)
            if index < last:
                skips[f"stages.{index}"] = x
        x = self.proj(self.backbone.norm(x))  # (B, C, h, w); backbone.norm is Identity without pre-activation
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid, skips
