"""Classification metrics from logits: top-k, per-class accuracy, confusion matrix, and the predictions CSV.

Ties are broken the way `torch.argmax` breaks them: among equal scores the lower class index
ranks first. So top-1 always agrees with the argmax prediction, and top-k is well defined
(``torch.topk`` picks arbitrarily among ties).

`ClassificationMeter` accumulates per-batch results (as gathered across processes) without
keeping the (N, K) logits; `classification_metrics` is the same for one tensor of logits.

File: `write_predictions_csv` (the confusion-matrix picture is `visualize.save_confusion_matrix_png`).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PREDICTION_FIELDS",
    "ClassificationMeter",
    "classification_metrics",
    "confusion_matrix",
    "format_topk",
    "per_class_accuracy",
    "topk_accuracy",
    "true_class_rank",
    "write_predictions_csv",
]

# Columns of the predictions CSV, in order. `sample` is the image file, or the index in the data set.
PREDICTION_FIELDS: tuple[str, ...] = (
    "sample",
    "true_index",
    "true_name",
    "predicted_index",
    "predicted_name",
    "score",
    "top5",
)


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, num_classes), got shape {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be (N,) = ({logits.shape[0]},), got shape {tuple(labels.shape)}")


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The 0-based rank of the true class among all classes of each sample.

    Rank = classes scoring strictly higher + classes scoring equal with a lower index (argmax's
    tie rule), so rank 0 means the argmax prediction is right.

    Args:
        logits: (N, K) scores (logits or probabilities; only their order matters).
        labels: (N,) int true classes in 0..K-1.

    Returns:
        (N,) int64 ranks in 0..K-1.
    """
    _check_logits(logits, labels)
    labels = labels.long()
    true_score = logits.gather(1, labels[:, None])  # (N, 1)
    higher = (logits > true_score).sum(dim=1)
    columns = torch.arange(logits.shape[1], device=logits.device)[None, :]
    tied_before = ((logits == true_score) & (columns < labels[:, None])).sum(dim=1)
    return higher + tied_before


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose true class is among the k best, for each k.

    k larger than the class count counts every sample correct (as timm's `accuracy` with
    ``topk=(1, min(5, K))``); an empty batch gives NaN.

    Args:
        logits: (N, K) scores.
        labels: (N,) int true classes.
        ks: the k values.

    Returns:
        {k: accuracy in [0, 1]}.
    """
    ranks = true_class_rank(logits, labels)
    count = ranks.numel()
    return {k: (float((ranks < k).sum()) / count if count else math.nan) for k in ks}


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true, predicted) pairs.

    Args:
        predictions: (N,) int predicted classes.
        labels: (N,) int true classes.
        num_classes: K.

    Returns:
        (K, K) int64, row = true class, column = predicted class; rows sum to each class's count.
    """
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(
            f"predictions and labels must both be (N,), got {tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    predictions, labels = predictions.long(), labels.long()
    for name, values in (("predictions", predictions), ("labels", labels)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(
                f"{name} span {int(values.min())}..{int(values.max())}, expected 0..{num_classes - 1}"
            )
    # One bincount over the flattened (true, predicted) index: O(N), no Python loop, any device.
    flat = torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Recall of each class from a confusion matrix: diagonal / row sum.

    Args:
        matrix: (K, K) counts, rows = true classes.

    Returns:
        (K,) float64; NaN for a class with no samples (it has no accuracy, not accuracy 0).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be (K, K), got shape {tuple(matrix.shape)}")
    totals = matrix.sum(dim=1).double()
    correct = matrix.diagonal().double()
    return torch.where(totals > 0, correct / totals.clamp(min=1), torch.full_like(totals, math.nan))


class ClassificationMeter:
    """Accumulates what the metrics need, batch by batch, without keeping the (N, K) logits.

    Per sample it keeps the true class, the rank of the true class, the best `keep_top` classes
    with their softmax probabilities and (optionally) the sample's data-set index; the summed
    cross-entropy is kept as one number. For ImageNet's 50,000 x 1000 logits that is about 3 MB
    instead of 200 MB per process.

    Example:
        meter = ClassificationMeter(num_classes)
        for logits, labels in batches:
            meter.update(logits, labels)
        metrics = meter.compute()
    """

    def __init__(self, num_classes: int, keep_top: int = 5) -> None:
        self.num_classes = num_classes
        self.keep_top = min(keep_top, num_classes)
        self._labels: list[torch.Tensor] = []
        self._ranks: list[torch.Tensor] = []
        self._top_indices: list[torch.Tensor] = []
        self._top_probs: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []
        self._loss_sum = 0.0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """
        Args:
            logits: (B, K) scores on any device, any float dtype (computed in float32).
            labels: (B,) int true classes.
            indices: (B,) int data-set indices of the samples, for the predictions file.
        """
        _check_logits(logits, labels)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the meter {self.num_classes}")
        logits, labels = logits.float(), labels.long()
        self._loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        self._ranks.append(true_class_rank(logits, labels).cpu())
        probs = logits.softmax(dim=1)
        # A stable descending sort puts the lower index first among ties, like argmax.
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, : self.keep_top]
        self._top_indices.append(order.cpu())
        self._top_probs.append(probs.gather(1, order).cpu())
        self._labels.append(labels.cpu())
        if indices is not None:
            self._indices.append(indices.long().cpu())

    @staticmethod
    def _cat(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
        return torch.cat(parts) if parts else empty

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 true classes, in update order."""
        return self._cat(self._labels, torch.zeros(0, dtype=torch.long))

    @property
    def top_indices(self) -> torch.Tensor:
        """(N, keep_top) int64 best classes, best first."""
        return self._cat(self._top_indices, torch.zeros(0, self.keep_top, dtype=torch.long))

    @property
    def top_probs(self) -> torch.Tensor:
        """(N, keep_top) float32 softmax probabilities of `top_indices`."""
        return self._cat(self._top_probs, torch.zeros(0, self.keep_top))

    @property
    def predictions(self) -> torch.Tensor:
        """(N,) int64 argmax classes."""
        return self.top_indices[:, 0]

    @property
    def indices(self) -> torch.Tensor | None:
        """(N,) int64 data-set indices, or None when `update` was not given them."""
        return torch.cat(self._indices) if self._indices else None

    def compute(self) -> dict[str, Any]:
        """The metrics of everything seen so far.

        Returns:
            {"top1", "top5", "mean_class_acc", "loss"} floats (top5 is top-min(5, K); loss is the
            mean plain cross-entropy; mean_class_acc averages the classes present; NaN when
            empty), plus "confusion_matrix" (K, K) int64 and "per_class_accuracy" (K,) float64.
        """
        ranks = self._cat(self._ranks, torch.zeros(0, dtype=torch.long))
        count = ranks.numel()
        matrix = confusion_matrix(self.predictions, self.labels, self.num_classes)
        per_class = per_class_accuracy(matrix)
        present = per_class[~per_class.isnan()]
        return {
            "top1": float((ranks < 1).sum()) / count if count else math.nan,
            "top5": float((ranks < 5).sum()) / count if count else math.nan,
            "mean_class_acc": float(present.mean()) if present.numel() else math.nan,
            "loss": self._loss_sum / count if count else math.nan,
            "confusion_matrix": matrix,
            "per_class_accuracy": per_class,
        }


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """`ClassificationMeter.compute` of one (N, K) logits tensor and its (N,) labels."""
    meter = ClassificationMeter(logits.shape[1] if logits.ndim == 2 else 0)
    meter.update(logits, labels)
    return meter.compute()


def format_topk(scores: torch.Tensor, class_names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    """The k best (name, probability) pairs of one sample, best first, argmax's tie rule.

    Args:
        scores: (K,) probabilities (or logits).
        class_names: K names.
    """
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return [(class_names[int(index)], float(scores[index])) for index in order]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, (list, tuple)):
        # top-5 as "name:score|name:score": one CSV cell, easy to split, names may hold spaces.
        return "|".join(f"{name}:{score:.6f}" for name, score in value)
    return value


def write_predictions_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write one row per image with the columns of `PREDICTION_FIELDS`.

    Args:
        path: the CSV file (parents are created).
        rows: mappings with keys from `PREDICTION_FIELDS`: ``sample`` (file path or index),
            ``true_index`` / ``true_name`` (absent or None for unlabelled images),
            ``predicted_index``, ``predicted_name``, ``score`` (probability of the prediction) and
            ``top5`` (a list of (name, probability), best first). Missing keys are left empty.

    Raises:
        ValueError: a row has a key outside `PREDICTION_FIELDS`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=PREDICTION_FIELDS, restval="", extrasaction="raise")
        writer.writeheader()
        for row in rows:
            unknown = set(row) - set(PREDICTION_FIELDS)
            if unknown:
                raise ValueError(f"{path}: prediction row has unknown columns {sorted(unknown)}")
            writer.writerow({key: _cell(value) for key, value in row.items()})
    return path
