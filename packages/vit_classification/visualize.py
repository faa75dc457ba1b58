"""Pictures of classification results, drawn on matplotlib's Agg canvas (no pyplot state, no display).

- `save_confusion_matrix_png`: the (K, K) confusion matrix, readable for 10 classes and for 1000.
- `save_prediction_grid`: a grid of images titled with predicted and true class.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["ANNOTATE_MAX_CLASSES", "TICK_LABEL_MAX_CLASSES", "save_confusion_matrix_png", "save_prediction_grid"]

# Above this many classes the confusion matrix has no tick labels (they would overlap), and
# above ANNOTATE_MAX_CLASSES no count is written into the cells.
TICK_LABEL_MAX_CLASSES = 30
ANNOTATE_MAX_CLASSES = 20


def save_confusion_matrix_png(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str], path: str | os.PathLike
                              ) -> Path:
    """Draw the confusion matrix as a PNG, coloured by the row-normalised rate (recall per true class).

    Readable for 10 classes (names on both axes, counts in the cells) and for 1000 (a heat map
    with no tick labels above `TICK_LABEL_MAX_CLASSES`: the diagonal and the confused blocks
    show). Colouring by row fraction keeps rare classes visible next to frequent ones.

    Args:
        matrix: (K, K) counts, rows = true class.
        class_names: K names.
        path: the PNG to write (parents are created).
    """
    # The Agg canvas directly: no pyplot global figure state, no backend selection, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.int64)
    num_classes = counts.shape[0]
    if counts.shape != (num_classes, num_classes) or len(class_names) != num_classes:
        raise ValueError(f"matrix {counts.shape} and {len(class_names)} class names do not match")
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, np.maximum(totals, 1), dtype=np.float64)

    labelled = num_classes <= TICK_LABEL_MAX_CLASSES
    side = min(max(6.0, 0.5 * num_classes + 3.0), 20.0) if labelled else 12.0
    figure = Figure(figsize=(side, side * 0.9), dpi=100 if labelled else 150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axes.set_title(f"confusion matrix ({counts.sum()} samples, top-1 {100 * accuracy:.2f}%)")
    if labelled:
        ticks = np.arange(num_classes)
        axes.set_xticks(ticks, labels=list(class_names), rotation=60, ha="right", fontsize=8)
        axes.set_yticks(ticks, labels=list(class_names), fontsize=8)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
    if num_classes <= ANNOTATE_MAX_CLASSES:
        for row in range(num_classes):
            for column in range(num_classes):
                if counts[row, column]:
                    colour = "white" if rates[row, column] > 0.5 else "black"
                    axes.text(column, row, str(counts[row, column]), ha="center", va="center",
                              fontsize=7, color=colour)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def save_prediction_grid(
    pictures: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """Draw images with their predicted and true class, up to 4 per row, as a PNG.

    Titles read "predicted (probability)" over "true: name", green when right, red when wrong.

    Args:
        pictures: float (B, C, H, W) in [0, 1] (denormalised), C 1 (drawn grey) or 3.
        probs: (B, K) class probabilities.
        labels: (B,) int true classes.
        class_names: K names, index = label.
        path: the PNG to write (parents are created).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = pictures.shape[0]
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows), dpi=100)
    FigureCanvasAgg(figure)
    for position in range(count):
        axes = figure.add_subplot(rows, columns, position + 1)
        picture = pictures[position].permute(1, 2, 0).numpy()
        if picture.shape[2] == 1:
            axes.imshow(picture[:, :, 0], cmap="gray", vmin=0, vmax=1)
        else:
            axes.imshow(picture)
        predicted = int(probs[position].argmax())
        truth = int(labels[position])
        colour = "tab:green" if predicted == truth else "tab:red"
        axes.set_title(f"{class_names[predicted][:18]} ({probs[position, predicted]:.2f})\ntrue: {class_names[truth][:18]}",
                       fontsize=8, color=colour)
        axes.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
