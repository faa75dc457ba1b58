"""Typed outputs of the backbone: what `forward_features` returns and what `feature_specs` describes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class FeatureSpec:
    """Channels and stride (input pixels per output pixel) of one named backbone output.

    A head is built from these alone, as detectron2 builds heads from `output_shape()`.
    """

    channels: int
    stride: int


@dataclass
class ViTFeatures:
    """Everything `VisionTransformer.forward_features` computes for a batch.

    Attributes:
        patch_tokens: (B, h*w, C) patch tokens after the final norm, row-major over the grid.
        cls_token: (B, C) class token after the final norm, or None when the model has none.
        register_tokens: (B, R, C) register tokens after the final norm, or None.
        grid_size: (h, w) = (H / patch, W / patch): the token grid of this input (inputs need
            not be square, and the grid is never guessed from N).
        skips: CNN skip maps of a hybrid model by name, e.g. {"stem": (B, 64, H/2, W/2),
            "stages.0": (B, 256, H/4, W/4), "stages.1": (B, 512, H/8, W/8)}; empty for a plain ViT.
    """

    patch_tokens: torch.Tensor
    cls_token: torch.Tensor | None
    register_tokens: torch.Tensor | None
    grid_size: tuple[int, int]
    skips: dict[str, torch.Tensor] = field(default_factory=dict)

    def patch_map(self) -> torch.Tensor:
        """The patch tokens as a feature map (B, C, h, w)."""
        batch, _, channels = self.patch_tokens.shape
        return self.patch_tokens.transpose(1, 2).reshape(batch, channels, *self.grid_size)
