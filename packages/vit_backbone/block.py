"""The pre-norm transformer encoder block."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, AttentionKernel
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp


class Block(nn.Module):
    """x + drop_path(ls1(attn(norm1(x)))), then x + drop_path(ls2(mlp(norm2(x)))).

    Args:
        dim: token channels C.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of C.
        qkv_bias: bias on the qkv projection.
        qk_norm: LayerNorm on queries and keys.
        init_values: LayerScale initial gain; None disables LayerScale.
        proj_drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate of this block.
        attn_kernel: ``"auto" | "sdpa" | "manual"``.
        norm_eps: LayerNorm epsilon (1e-6 in every ViT checkpoint family this project loads).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_kernel: AttentionKernel = "auto",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
            proj_drop=proj_drop, kernel=attn_kernel, norm_eps=norm_eps,
        )
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C); `attn_mask` as in `Attention.forward`."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
