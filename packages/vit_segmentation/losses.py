"""TransUNet's training loss: cross-entropy plus soft Dice, with labels checked before use.

For class k, with p the softmax probability map and g the one-hot label over all pixels of the
batch (not per image, as TransUNet computes it)::

    dice_k = (2 * sum(p_k * g_k) + smooth) / (sum(p_k ** 2) + sum(g_k ** 2) + smooth)
    DiceLoss = mean over k = 0..C-1 (background included) of (1 - dice_k)

The squared denominators are V-Net's (Milletari et al. 2016) and TransUNet's `DiceLoss`; smooth
1e-5 keeps a class absent from the batch and the prediction at loss ~0 instead of 0/0.

A label outside [0, C) makes `cross_entropy` fail with a device-side assert on a GPU (an
unreadable crash reported again and again on TransUNet); here it is a ValueError that names the
offending values, found with one min/max read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CeDiceLoss", "DiceLoss", "check_labels"]


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise a one-line ValueError when `labels` holds a value outside [0, num_classes).

    Args:
        labels: integer labels of any shape.
        num_classes: the number of classes C.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() == 0:
        return
    low, high = torch.stack([labels.min(), labels.max()]).tolist()  # one device read for both
    if low < 0 or high >= num_classes:
        bad = torch.unique(labels[(labels < 0) | (labels >= num_classes)])[:10].tolist()
        raise ValueError(
            f"labels hold values {bad} outside [0, {num_classes}) for num_classes={num_classes}; "
            "set model.num_classes to cover every label value (background 0 included) or fix the label files"
        )


def _check_shapes(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim < 2 or labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not fit: "
            "expected logits (B, C, *spatial) and labels (B, *spatial)"
        )


class DiceLoss(nn.Module):
    """Soft Dice loss over softmax probabilities, background included, mean over classes.

    Args:
        num_classes: classes C (channels of the logits).
        smooth: added to numerator and denominator of every class's Dice.
    """

    def __init__(self, num_classes: int, smooth: float = 1e-5) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        self.num_classes = num_classes
        self.smooth = smooth

    def per_class(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """1 - soft Dice of each class, (C,) float32.

        Args:
            logits: (B, C, *spatial) raw scores, any float dtype (computed in float32).
            labels: (B, *spatial) int64 in [0, C) (checked by the caller, `CeDiceLoss` or `forward`).
        """
        probs = logits.float().softmax(dim=1)
        target = F.one_hot(labels, self.num_classes).movedim(-1, 1).to(probs.dtype)
        dims = [0, *range(2, probs.ndim)]
        intersection = (probs * target).sum(dim=dims)
        denominator = (probs * probs).sum(dim=dims) + (target * target).sum(dim=dims)
        return 1 - (2 * intersection + self.smooth) / (denominator + self.smooth)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits (B, C, *spatial) and labels (B, *spatial) int64."""
        _check_shapes(logits, labels)
        check_labels(labels, self.num_classes)
        return self.per_class(logits, labels).mean()


class CeDiceLoss(nn.Module):
    """``ce_weight * cross_entropy + dice_weight * DiceLoss`` (TransUNet: 0.5 / 0.5), in float32.

    Args:
        num_classes: classes C.
        ce_weight: weight of the mean pixel-wise cross-entropy.
        dice_weight: weight of `DiceLoss`.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"ce_weight={ce_weight} and dice_weight={dice_weight} must be >= 0, not both 0")
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.dice = DiceLoss(num_classes)

    def components(self, logits: torch.Tensor, labels: torch.Tensor, check: bool = True) -> dict[str, torch.Tensor]:
        """{"loss", "ce", "dice"} scalars for logits (B, C, *spatial) and int64 labels (B, *spatial).

        `check=False` skips `check_labels` (one host-device sync) for labels already checked on the host.
        """
        _check_shapes(logits, labels)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} channels but num_classes={self.num_classes}")
        if check:
            check_labels(labels, self.num_classes)
        ce = F.cross_entropy(logits.float(), labels)
        dice = self.dice.per_class(logits, labels).mean()
        return {"loss": self.ce_weight * ce + self.dice_weight * dice, "ce": ce, "dice": dice}

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weighted scalar loss."""
        return self.components(logits, labels)["loss"]
