"""TransUNet (Chen et al. 2021): a ViT (hybrid R50+ViT or plain) encoder with a cascaded upsampler.

    image (B, 1 or 3, H, W)                          1 channel -> repeated to 3 for an RGB backbone
      -> backbone.forward_features                   tokens (B, h*w, C) on the grid (h, w) = (H/p, W/p)
                                                     + CNN skips of a hybrid, e.g. 64@H/2, 256@H/4, 512@H/8
      -> tokens as a map (B, C, h, w)                 with the known grid, never sqrt(N)
      -> conv3x3 + BN + ReLU -> head_channels         (TransUNet's "conv_more", 512)
      -> len(decoder_channels) x [upsample x2 (bilinear), concat the skip of that stride (first
         n_skip stages), 2 x (conv3x3 + BN + ReLU)]  e.g. 256@H/8, 128@H/4, 64@H/2, 16@H
      -> conv3x3 -> num_classes                        logits (B, num_classes, H, W)

The skip maps are found by stride in `backbone.feature_specs()` (the names and channels of the
hybrid's CNN outputs), so nothing here repeats the backbone's numbers. With R50-ViT-B/16 at 224 x
224 and n_skip=3 every shape is TransUNet's (reference: networks/vit_seg_modeling.py); n_skip=0 is
the paper's "R50-ViT-CUP" and the only choice for a plain ViT, which has no CNN skips.

Known differences from Beckschen/TransUNet: the hybrid CNN is timm's ResNetV2 with TF-"same"
padding (TransUNet pads its max-pool by 0 and zero-pads stage 1 from 55 to 56), and the backbone
keeps the checkpoint's class token (TransUNet drops it); upsampling is bilinear with
align_corners=True as TransUNet's `nn.UpsamplingBilinear2d`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vit_backbone import VisionTransformer, build_backbone

from .config import ModelConfig

__all__ = ["ConvBnReLU", "DecoderStage", "TransUNet", "build_transunet"]

# Names in `feature_specs()` that are transformer outputs (stride = patch size), not CNN skips.
_TOKEN_OUTPUTS = ("blocks.", "norm")


class ConvBnReLU(nn.Sequential):
    """3x3 convolution (no bias: BatchNorm follows) + BatchNorm + ReLU; (B, in, H, W) -> (B, out, H, W).

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderStage(nn.Module):
    """One upsampler stage: x2 bilinear upsampling, concatenation with a skip map, two ConvBnReLU.

    Args:
        in_channels: channels of the map from the previous stage.
        skip_channels: channels of the skip map concatenated after upsampling; 0 for none.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.skip_channels = skip_channels
        self.conv1 = ConvBnReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBnReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, h, w).
            size: the output (H', W'), twice (h, w) (given, not computed, so odd skip sizes cannot drift).
            skip: (B, skip_channels, H', W') or None when the stage has no skip.

        Returns:
            (B, out_channels, H', W').
        """
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        if self.skip_channels:
            if skip is None:
                raise ValueError(f"this decoder stage takes a {self.skip_channels}-channel skip map; none given")
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def _skip_names_by_stride(backbone: VisionTransformer) -> dict[int, tuple[str, int]]:
    """stride -> (name, channels) of the backbone's CNN skip maps (empty for a plain ViT)."""
    skips: dict[int, tuple[str, int]] = {}
    for name, spec in backbone.feature_specs().items():
        if name.startswith(_TOKEN_OUTPUTS):
            continue
        skips[spec.stride] = (name, spec.channels)
    return skips


class TransUNet(nn.Module):
    """TransUNet: a `vit_backbone` ViT encoder with TransUNet's cascaded upsampler (CUP) and head.

    Args:
        backbone: the encoder, e.g. `create_vit("vit_base_r50_s16", num_classes=0)`; its classifier
            head is not used. Inputs must have sides divisible by its patch size.
        num_classes: segmentation classes C, background included.
        n_skip: how many decoder stages (from the deepest) concatenate a CNN skip map, 0-3 for
            R50-ViT (3 = TransUNet, 0 = "R50-ViT-CUP"); a plain ViT has no skips and needs 0.
        decoder_channels: output channels of each upsampler stage; each stage doubles the
            resolution, so their count must satisfy 2 ** len(decoder_channels) == patch size
            (4 stages for patch 16, 3 for patch 8).
        head_channels: channels of the 3x3 convolution applied to the token map ("conv_more").

    Raises:
        ValueError: n_skip outside [0, number of skip maps the backbone has], or a decoder depth
            that does not bring the token grid back to the input resolution.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        n_skip: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        head_channels: int = 512,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2 (background and at least one class)")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if not decoder_channels or min(decoder_channels) < 1:
            raise ValueError(f"decoder_channels={list(decoder_channels)} must be positive channel counts")
        patch = backbone.patch_size
        if 2 ** len(decoder_channels) != patch:
            raise ValueError(
                f"decoder_channels={list(decoder_channels)} gives {len(decoder_channels)} x2 upsampling stages "
                f"(x{2 ** len(decoder_channels)}), but the backbone's patch size is {patch}: give "
                f"{patch.bit_length() - 1} decoder channels"
            )
        available = _skip_names_by_stride(backbone)
        # Stage i outputs stride patch / 2**(i+1): the skip of that stride, if the first n_skip stages take one.
        strides = [patch // 2 ** (index + 1) for index in range(len(decoder_channels))]
        usable = [stride for stride in strides if stride in available]
        if not 0 <= n_skip <= len(usable):
            kind = "a plain ViT, which has no CNN skip maps" if not available else (
                f"{len(usable)} skip maps ({', '.join(available[s][0] for s in usable)})")
            raise ValueError(f"n_skip={n_skip} is not possible with {kind}; use 0 <= n_skip <= {len(usable)}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.n_skip = n_skip
        self.decoder_channels = decoder_channels
        self.skip_names: list[str | None] = []
        for index, stride in enumerate(strides):
            uses_skip = index < n_skip and stride in available
            self.skip_names.append(available[stride][0] if uses_skip else None)
        skip_channels = [available[stride][1] if name else 0 for stride, name in zip(strides, self.skip_names,
                                                                                     strict=True)]
        self.conv_more = ConvBnReLU(backbone.embed_dim, head_channels)
        in_channels = (head_channels, *decoder_channels[:-1])
        self.decoder = nn.ModuleList(
            DecoderStage(cin, cskip, cout)
            for cin, cskip, cout in zip(in_channels, skip_channels, decoder_channels, strict=True)
        )
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)

    @property
    def in_chans(self) -> int:
        """Channels the backbone takes; 1-channel inputs are repeated to 3 for a 3-channel backbone."""
        return self.backbone.in_chans

    def no_weight_decay(self) -> set[str]:
        """Backbone embeddings and tokens, named relative to this module (for `vit_training.optim`)."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"TransUNet expects images (B, C, H, W), got shape {tuple(x.shape)}")
        channels = x.shape[1]
        if channels == self.in_chans:
            return x
        if channels == 1 and self.in_chans == 3:
            # TransUNet's treatment of CT slices: the grey channel repeated for an RGB-pretrained encoder.
            return x.expand(-1, 3, -1, -1)
        raise ValueError(f"input has {channels} channels but the backbone takes {self.in_chans} (or 1, repeated)")

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate of the forward pass, by name, in computation order.

        Args:
            x: images (B, 1 or in_chans, H, W), H and W divisible by the patch size p.

        Returns:
            {"input": (B, in_chans, H, W), "skip.<name>": each CNN skip map the backbone gives
            (e.g. "skip.stem" (B, 64, H/2, W/2)), "tokens": (B, h*w, C), "token_map": (B, C, h, w),
            "conv_more": (B, head_channels, h, w), "decoder.<i>": (B, decoder_channels[i], H*2^(i+1)/p,
            W*2^(i+1)/p), "logits": (B, num_classes, H, W)}.
        """
        x = self._prepare_input(x)
        stages: dict[str, torch.Tensor] = {"input": x}
        features = self.backbone.forward_features(x)
        for name, skip in features.skips.items():
            stages[f"skip.{name}"] = skip
        stages["tokens"] = features.patch_tokens
        stages["token_map"] = features.patch_map()
        hidden = self.conv_more(stages["token_map"])
        stages["conv_more"] = hidden
        height, width = x.shape[-2:]
        patch = self.backbone.patch_size
        for index, (stage, skip_name) in enumerate(zip(self.decoder, self.skip_names, strict=True)):
            stride = patch // 2 ** (index + 1)
            skip = features.skips[skip_name] if skip_name is not None else None
            hidden = stage(hidden, (height // stride, width // stride), skip)
            stages[f"decoder.{index}"] = hidden
        stages["logits"] = self.segmentation_head(hidden)
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1 or in_chans, H, W) -> logits (B, num_classes, H, W)."""
        return self.forward_stages(x)["logits"]


# ---------------------------------------------------------------------------------------------- build
def build_transunet(model_config: ModelConfig, load_weights: bool = True) -> TransUNet:
    """Build the TransUNet a `SegmentationConfig.model` section describes, pretrained weights loaded.

    The encoder is `vit_backbone.build_backbone(model_config.backbone)` without a classifier (a
    checkpoint's head is dropped; its position embedding is resampled to the backbone's grid,
    e.g. 14 x 14 -> 14 x 6 for 224 x 96 inputs); a null `backbone.in_chans` takes 3.

    Args:
        model_config: a `vit_segmentation.config.ModelConfig` (backbone, num_classes, n_skip,
            decoder and head channels).
        load_weights: load `model_config.backbone.pretrained` when set; False builds the
            architecture only (to load a trained `model.safetensors` into it afterwards).

    Returns:
        a `TransUNet` on the CPU in fp32: images (B, 1 or in_chans, H, W) -> logits (B, C, H, W).

    Raises:
        FileNotFoundError: `pretrained` names no file.
        ValueError: the checkpoint does not fit the backbone (one line naming the file and key).
    """
    backbone_config = model_config.backbone
    if backbone_config.in_chans is None:
        backbone_config = dataclasses.replace(backbone_config, in_chans=3)
    backbone = build_backbone(backbone_config, num_classes=0, load_weights=load_weights)
    return TransUNet(backbone, model_config.num_classes, n_skip=model_config.n_skip,
                     decoder_channels=tuple(model_config.decoder_channels),
                     head_channels=model_config.head_channels)
