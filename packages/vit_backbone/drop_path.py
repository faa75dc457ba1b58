"""Stochastic depth (drop path): drop whole residual branches per sample."""

from __future__ import annotations

import torch
from torch import nn


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Linearly increasing drop-path rates over depth: 0 for the first block, `drop_path_rate` for the last."""
    if depth <= 1:
        return [drop_path_rate] * depth
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    """Zero a residual branch for a random subset of samples during training.

    Survivors are scaled by `1 / (1 - drop_prob)` so the expected value is unchanged.

    Args:
        drop_prob: probability of dropping the branch of one sample.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...) -> (B, ...)."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = x.new_empty(mask_shape).bernoulli_(keep_prob)
        return x * keep.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"
