"""Necks: from the ViT's one stride-p token map to the transformer's input level(s).

* `SingleScaleNeck` (DETR's ``input_proj``): a 1x1 convolution to the transformer width.
* `SimpleFeaturePyramid` (ViTDet, Li et al. 2022): several strides built from the single
  map alone: x2 by a stride-2 transposed convolution, x1 as is, x0.5 by max-pooling, each then
  1x1 and 3x3 convolutions to the transformer width.

Both are padding-exact: a padded image's valid cells come out as they would for the image on
its own. That takes three choices, each cheap:

* normalisation over channels at each cell (`LayerNorm2d`, as ViTDet), not GroupNorm, whose
  statistics over H x W would change with the amount of padding;
* padding cells are set to zero before each 3x3 convolution, which is what the convolution's
  own zero padding shows it at the border of an unpadded image;
* max-pooling uses ``ceil_mode`` and sees padding as -inf, so a window at the border pools the
  valid cells only, exactly as the unpadded image's ``ceil_mode`` border window does.

The masks follow the cells: a cell is padding when its top-left input cell is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vit_backbone import FeatureSpec

__all__ = ["LayerNorm2d", "NeckLevel", "SimpleFeaturePyramid", "SingleScaleNeck"]

# One level: a map (B, hidden_dim, h, w) and its padding mask (B, h, w), True on padding.
NeckLevel = tuple[torch.Tensor, torch.Tensor]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each cell of a (B, C, H, W) map (ViTDet's norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with the cells where `mask` (B, H, W) is True set to 0."""
    return x.masked_fill(mask[:, None], 0.0)


class SingleScaleNeck(nn.Module):
    """One level at the backbone's stride: 1x1 convolution and channel LayerNorm.

    Args:
        in_spec: channels and stride of the backbone map (from `feature_specs()`).
        hidden_dim: output channels (the transformer width).
    """

    def __init__(self, in_spec: FeatureSpec, hidden_dim: int) -> None:
        super().__init__()
        self.strides: tuple[int, ...] = (in_spec.stride,)
        self.proj = nn.Conv2d(in_spec.channels, hidden_dim, kernel_size=1)
        self.norm = LayerNorm2d(hidden_dim)

    def forward(self, feature: torch.Tensor, mask: torch.Tensor) -> list[NeckLevel]:
        """(B, C, h, w) map and (B, h, w) padding mask -> [((B, hidden_dim, h, w), mask)]."""
        return [(_zero_padding(self.norm(self.proj(feature)), mask), mask)]

    def valid_cells(self, grid: tuple[int, int]) -> int:
        """Cells of the level that are not padding for an image whose valid token grid is `grid` (h, w)."""
        return int(grid[0]) * int(grid[1])


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid from one map, padding-exact (see the module docstring).

    Args:
        in_spec: channels C and stride s of the backbone map (from `feature_specs()`).
        hidden_dim: output channels of every level.
        scale_factors: resolution of each level relative to the input map, from 4.0, 2.0, 1.0,
            0.5; the strides are s / factor (e.g. 8, 16, 32 for (2.0, 1.0, 0.5) and s = 16).
    """

    def __init__(
        self, in_spec: FeatureSpec, hidden_dim: int, scale_factors: Sequence[float] = (2.0, 1.0, 0.5)
    ) -> None:
        super().__init__()
        allowed = (4.0, 2.0, 1.0, 0.5)
        if not scale_factors or any(float(f) not in allowed for f in scale_factors):
            raise ValueError(f"simple_fpn scale_factors={tuple(scale_factors)} must be a non-empty subset of {allowed}")
        channels = in_spec.channels
        self.scale_factors = tuple(float(f) for f in scale_factors)
        self.strides = tuple(int(in_spec.stride / f) for f in self.scale_factors)
        self.resamplers = nn.ModuleList()
        self.lateral = nn.ModuleList()
        self.output = nn.ModuleList()
        for factor in self.scale_factors:
            if factor == 4.0:
                resampler: nn.Module = nn.Sequential(
                    nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2),
                    LayerNorm2d(channels // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(channels // 2, channels // 4, kernel_size=2, stride=2),
                )
                level_channels = channels // 4
            elif factor == 2.0:
                resampler = nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2)
                level_channels = channels // 2
            elif factor == 1.0:
                resampler = nn.Identity()
                level_channels = channels
            else:
                resampler = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
                level_channels = channels
            self.resamplers.append(resampler)
            # Convolutions without bias: the LayerNorm after each has one.
            self.lateral.append(nn.Sequential(
                nn.Conv2d(level_channels, hidden_dim, kernel_size=1, bias=False), LayerNorm2d(hidden_dim)
            ))
            self.output.append(nn.Sequential(
                nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, bias=False), LayerNorm2d(hidden_dim)
            ))

    def valid_cells(self, grid: tuple[int, int]) -> int:
        """Cells of all levels that are not padding for an image whose valid token grid is `grid` (h, w).

        The host-side count of what `forward`'s level masks leave valid: pooled levels keep a cell
        when its top-left input cell is valid (ceil), upsampled ones repeat every valid cell.
        """
        height, width = int(grid[0]), int(grid[1])
        total = 0
        for factor in self.scale_factors:
            if factor == 0.5:
                total += -(-height // 2) * -(-width // 2)
            else:
                total += height * int(factor) * width * int(factor)
        return total

    def _resample(self, index: int, x: torch.Tensor, mask: torch.Tensor) -> NeckLevel:
        factor = self.scale_factors[index]
        if factor == 0.5:
            # -inf on padding: a border window pools the valid cells only (ceil_mode keeps
            # the partial window of an odd-sized image, as the unpadded forward does).
            pooled = self.resamplers[index](x.masked_fill(mask[:, None], float("-inf")))
            level_mask = mask[:, ::2, ::2]
            return pooled, level_mask
        if factor == 1.0:
            return x, mask
        # Transposed convolution with kernel = stride: each output cell comes from one input cell.
        repeat = int(factor)
        level_mask = mask.repeat_interleave(repeat, dim=1).repeat_interleave(repeat, dim=2)
        return self.resamplers[index](x), level_mask

    def forward(self, feature: torch.Tensor, mask: torch.Tensor) -> list[NeckLevel]:
        """(B, C, h, w) map and (B, h, w) padding mask -> one (map (B, hidden_dim, h_l, w_l), mask) per level."""
        feature = _zero_padding(feature, mask)
        levels: list[NeckLevel] = []
        for index in range(len(self.scale_factors)):
            x, level_mask = self._resample(index, feature, mask)
            x = _zero_padding(self.lateral[index](_zero_padding(x, level_mask)), level_mask)
            x = _zero_padding(self.output[index](x), level_mask)
            levels.append((x, level_mask))
        return levels
