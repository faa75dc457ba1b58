"""Position embeddings: fixed sinusoids and resampling of learned grids.

Learned position embeddings are stored for one token grid (h, w) and resampled to the grid of
the actual input. Libraries resample differently, so the method is selectable; each entry of
`RESAMPLERS` reproduces one library exactly:

* ``"timm"`` (default): bicubic with antialias, ``align_corners=False``;
* ``"torchvision"``: bicubic with ``align_corners=True`` (torchvision ``interpolate_embeddings``);
* ``"hf"``: bicubic, ``align_corners=False``, no antialias (Hugging Face ``interpolate_pos_encoding``);
* ``"bilinear"``: bilinear, ``align_corners=False``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

PosEmbedResampler = Literal["timm", "torchvision", "hf", "bilinear"]
RESAMPLERS: dict[str, dict] = {
    "timm": {"mode": "bicubic", "antialias": True, "align_corners": False},
    "torchvision": {"mode": "bicubic", "antialias": False, "align_corners": True},
    "hf": {"mode": "bicubic", "antialias": False, "align_corners": False},
    "bilinear": {"mode": "bilinear", "antialias": False, "align_corners": False},
}
POS_EMBED_KINDS: tuple[str, ...] = ("learn", "sincos1d", "sincos2d", "none")


def resample_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 0,
    resampler: PosEmbedResampler = "timm",
) -> torch.Tensor:
    """Resample a learned position embedding from one token grid to another.

    Args:
        pos_embed: (1, num_prefix_tokens + h_old * w_old, C); the prefix rows (class and
            register tokens) are kept as they are.
        old_grid: (h_old, w_old) the embedding was trained for.
        new_grid: (h_new, w_new) wanted; need not be square.
        num_prefix_tokens: leading rows that belong to prefix tokens, not to the grid.
        resampler: a key of `RESAMPLERS`.

    Returns:
        (1, num_prefix_tokens + h_new * w_new, C), in the dtype of `pos_embed`.
    """
    if resampler not in RESAMPLERS:
        raise ValueError(f"pos-embed resampler {resampler!r} is not one of {tuple(RESAMPLERS)}")
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if pos_embed.shape[1] != expected:
        raise ValueError(
            f"position embedding has {pos_embed.shape[1]} rows but grid {old_grid[0]}x{old_grid[1]} "
            f"with {num_prefix_tokens} prefix tokens needs {expected}"
        )
    # A grid traced as a symbol (torch.export / ONNX with a dynamic image size) must not be compared:
    # the graph then always resamples, which at the trained grid gives the table back (within rounding).
    symbolic = any(isinstance(side, torch.SymInt) for side in new_grid)
    if not symbolic and tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid_rows = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    channels = grid_rows.shape[-1]
    # (1, h*w, C) -> (1, C, h, w); interpolate in fp32 (bicubic is not implemented for bf16 everywhere)
    grid_map = grid_rows.float().reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid_map = F.interpolate(grid_map, size=tuple(new_grid), **RESAMPLERS[resampler])
    grid_rows = grid_map.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels)
    return torch.cat([prefix, grid_rows.to(pos_embed.dtype)], dim=1)


def sincos_1d(num_positions: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The fixed sinusoid of "Attention is all you need", positions 0..num_positions-1.

    Returns:
        (num_positions, dim): even channels sin(pos / T^(2i/dim)), odd channels cos(...).
    """
    if dim % 2:
        raise ValueError(f"sincos1d position embedding needs an even embed_dim, got {dim}")
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(temperature) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos embedding (MoCo v3, "Simple ViT"): a quarter of the channels each for
    sin(x), cos(x), sin(y), cos(y) at geometric frequencies.

    Returns:
        (h * w, dim) in row-major grid order.
    """
    if dim % 4:
        raise ValueError(f"sincos2d position embedding needs embed_dim divisible by 4, got {dim}")
    height, width = grid
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_x = xs.reshape(-1, 1) * omega[None]
    out_y = ys.reshape(-1, 1) * omega[None]
    return torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)
