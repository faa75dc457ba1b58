"""The transformer block's feed-forward network."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, applied to every token.

    Args:
        dim: input and output channels C.
        hidden_dim: hidden channels (C * mlp_ratio, 4C in every ViT preset).
        drop: dropout after the activation and after fc2.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact erf GELU, as timm, torchvision and the JAX originals
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
