"""Image to patch tokens with one strided convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_image_batch(x: torch.Tensor, in_chans: int, stride: int, pad_to_stride: bool) -> None:
    """Raise a one-line ValueError when `x` is not a (B, in_chans, H, W) batch the model can tokenise."""
    if x.ndim != 4:
        raise ValueError(f"expected an image batch of shape (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"input has {x.shape[1]} channels but the model was built with in_chans={in_chans}"
        )
    height, width = x.shape[-2:]
    if not pad_to_stride and (height % stride or width % stride):
        raise ValueError(
            f"input size {height}x{width} is not divisible by the patch size {stride}; "
            f"resize to a multiple of {stride} or build the model with dynamic_img_pad=True"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) on the bottom and right so H and W are multiples of `multiple`."""
    pad_h = (-x.shape[-2]) % multiple
    pad_w = (-x.shape[-1]) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def tokenise(x: torch.Tensor, layers: nn.Module, in_chans: int, stride: int, dynamic_img_pad: bool
             ) -> tuple[torch.Tensor, tuple[int, int], dict[str, torch.Tensor]]:
    """Check and (optionally) pad an image batch, map it with `layers` to (B, C, h, w), flatten to tokens.

    The one forward path of the patch embeddings whose map has no skips (patches, conv stem).

    Args:
        x: images (B, in_chans, H, W).
        layers: image -> (B, C, H/stride, W/stride) map.
        in_chans, stride, dynamic_img_pad: as `check_image_batch`; padding goes bottom/right.

    Returns:
        tokens (B, h*w, C) in row-major order, the grid (h, w), and an empty dict (no skip maps).
    """
    check_image_batch(x, in_chans, stride, dynamic_img_pad)
    if dynamic_img_pad:
        x = pad_to_multiple(x, stride)
    x = layers(x)  # (B, C, h, w)
    grid = (x.shape[-2], x.shape[-1])
    return x.flatten(2).transpose(1, 2), grid, {}


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping p x p patches and project each to C channels.

    A Conv2d with kernel = stride = p is exactly "flatten each patch, then Linear", and
    takes any channel count (grey, RGB, multi-modal).

    Args:
        patch_size: patch side p.
        in_chans: image channels.
        embed_dim: token channels C.
        dynamic_img_pad: zero-pad inputs whose size is not divisible by p instead of failing.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, dynamic_img_pad: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.dynamic_img_pad = dynamic_img_pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    @property
    def stride(self) -> int:
        return self.patch_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], dict[str, torch.Tensor]]:
        """Tokenise an image batch.

        Args:
            x: images (B, in_chans, H, W).

        Returns:
            tokens (B, h*w, C) in row-major order, the grid (h, w) = (H/p, W/p) (rounded up
            when padding), and an empty dict (a plain ViT has no CNN skip maps).
        """
        return tokenise(x, self.proj, self.in_chans, self.patch_size, self.dynamic_img_pad)
