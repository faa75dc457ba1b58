"""Fixed sinusoidal encodings of 2D positions (feature-map cells) and of boxes (anchor queries).

The transformer has no notion of where a token lies; DETR adds a 2D sine encoding to the
queries and keys of every attention layer. Positions are normalised by each image's own
valid extent (from the padding mask), so a cell gets the same encoding whether or not the
image was padded in its batch, and the encoding of cell i is that of its centre coordinate
(i + 0.5) / n in [0, 1]: the same scale as the normalised boxes, which is what lets an anchor
box's encoding (`box_sine_embedding`) be compared with the memory's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "box_sine_embedding", "sine_encode"]


def sine_encode(values: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Encode scalars at `num_feats` / 2 geometric frequencies, sin and cos interleaved.

    Args:
        values: (...) positions, already scaled (e.g. by 2 pi for [0, 1] inputs).
        num_feats: output channels (even).
        temperature: the longest wavelength.

    Returns:
        (..., num_feats) float32: channel 2k = sin(v / T^(2k / num_feats)), 2k + 1 = cos(same).
    """
    if num_feats % 2:
        raise ValueError(f"sine_encode needs an even number of channels, got {num_feats}")
    exponent = 2 * torch.div(torch.arange(num_feats, device=values.device), 2, rounding_mode="floor") / num_feats
    angles = values.float()[..., None] / (temperature ** exponent)
    return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """DETR's 2D sine position encoding of a feature map, computed from its padding mask.

    Args:
        num_pos_feats: channels per axis; the output has 2 * num_pos_feats (y first, then x),
            i.e. num_pos_feats = hidden_dim / 2.
        temperature: the longest wavelength of `sine_encode`.
        normalize: divide positions by the image's valid extent (rows / columns that are not
            padding) so they lie in (0, 1), then multiply by `scale`; otherwise use raw indices.
        scale: the factor after normalising (2 pi: one full period over the image).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """Encode every cell of a (padded) feature map.

        Args:
            mask: (B, H, W) bool, True on padding (DETR's convention).

        Returns:
            (B, 2 * num_pos_feats, H, W) float32; values on padding cells are meaningless
            (attention masks them).
        """
        not_mask = (~mask).float()
        # Cumulative counts of valid cells = 1-based positions, independent of the padding.
        y_pos = not_mask.cumsum(1)
        x_pos = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_pos = (y_pos - 0.5) / (y_pos[:, -1:, :] + eps) * self.scale
            x_pos = (x_pos - 0.5) / (x_pos[:, :, -1:] + eps) * self.scale
        encoding = torch.cat(
            [sine_encode(y_pos, self.num_pos_feats, self.temperature),
             sine_encode(x_pos, self.num_pos_feats, self.temperature)],
            dim=-1,
        )
        return encoding.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
                f"normalize={self.normalize}, scale={self.scale:.4f}")


def box_sine_embedding(
    boxes: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> torch.Tensor:
    """Sine-encode normalised cxcywh boxes for anchor queries (DAB-DETR).

    The first 2 * num_pos_feats channels encode (cy, cx) exactly as `PositionEmbeddingSine`
    encodes a cell centre, so an anchor's positional query starts out aligned with the keys of
    the cells under it; w and h follow.

    Args:
        boxes: (..., 4) (cx, cy, w, h) in [0, 1].
        num_pos_feats: channels per coordinate.

    Returns:
        (..., 4 * num_pos_feats) float32, ordered (cy, cx, w, h).
    """
    cx, cy, w, h = (boxes[..., i] * scale for i in range(4))
    return torch.cat([sine_encode(v, num_pos_feats, temperature) for v in (cy, cx, w, h)], dim=-1)
