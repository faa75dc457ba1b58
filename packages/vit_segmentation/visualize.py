"""Pictures of segmentations: label overlays on grey slices, drawn on matplotlib's Agg canvas.

- `class_colours`: one colour per class, black for the background, no greys.
- `save_overlays`: one row per slice: the image, the truth over it, the prediction over it.
- `overlay_slice_indices`: which slices of a volume to show.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["class_colours", "overlay_slice_indices", "save_overlays"]


def class_colours(num_classes: int) -> np.ndarray:
    """(C, 3) float RGB in [0, 1]: black background, then distinct colours that are not grey.

    tab10 (9 colours without its grey) up to 9 classes, tab20 (18 without its greys) up to 18,
    evenly spaced hues beyond: a grey class would vanish on a grey slice.
    """
    from matplotlib import colormaps

    foreground = num_classes - 1
    if foreground <= 9:
        colours = colormaps["tab10"](np.delete(np.arange(10), 7))[:foreground, :3]
    elif foreground <= 18:
        colours = colormaps["tab20"](np.delete(np.arange(20), [14, 15]))[:foreground, :3]
    else:
        colours = colormaps["hsv"](np.linspace(0, 1, foreground, endpoint=False))[:, :3]
    return np.concatenate([np.zeros((1, 3)), colours]).astype(np.float64)


def _normalised(image: np.ndarray) -> np.ndarray:
    """A slice scaled to [0, 1] by its own min and max (zeros when constant), for display."""
    low, high = float(np.min(image)), float(np.max(image))
    return (image - low) / (high - low) if high > low else np.zeros_like(image, dtype=np.float64)


def _blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A grey (H, W) slice with labelled pixels tinted: (H, W, 3) float in [0, 1]."""
    rgb = np.repeat(_normalised(image)[..., None], 3, axis=2)
    mask = labels > 0
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours[labels[mask].astype(np.intp)]
    return rgb


def save_overlays(
    path: str | os.PathLike,
    images: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    truths: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """One row per slice: the image, the truth over it (when given) and the prediction over it, with a legend.

    Args:
        path: the PNG to write (its folder is created).
        images: float (N, H, W) slices.
        predictions: int (N, H, W) predicted labels.
        class_names: the C-1 foreground class names (colour k+1 is class_names[k]).
        truths: int (N, H, W) ground-truth labels, or None.
        titles: one title per row, e.g. "case0001 slice 42".
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = class_colours(len(class_names) + 1)
    rows = images.shape[0]
    columns = 3 if truths is not None else 2
    height, width = images.shape[1:]
    panel = 3.0
    figure = Figure(figsize=(panel * columns * max(width / height, 0.5) + 2.2, panel * rows + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    for row in range(rows):
        panels = [("image", np.repeat(_normalised(images[row])[..., None], 3, axis=2))]
        if truths is not None:
            panels.append(("truth", _blend(images[row], truths[row], colours)))
        panels.append(("prediction", _blend(images[row], predictions[row], colours)))
        for column, (name, picture) in enumerate(panels):
            axes = figure.add_subplot(rows, columns, row * columns + column + 1)
            axes.imshow(picture, interpolation="nearest")
            label = f"{titles[row]}: {name}" if titles is not None and column == 0 else name
            axes.set_title(label, fontsize=8)
            axes.axis("off")
    handles = [Patch(color=colours[index + 1], label=name) for index, name in enumerate(class_names)]
    figure.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1 - 2.0 / figure.get_figwidth(), 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def overlay_slice_indices(labels: np.ndarray, count: int) -> list[int]:
    """`count` slice indices spread evenly over the slices that hold foreground (all slices if none do)."""
    candidates = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if candidates.size == 0:
        candidates = np.arange(labels.shape[0])
    picks = np.linspace(0, candidates.size - 1, num=min(count, candidates.size)).round().astype(int)
    return sorted({int(candidates[pick]) for pick in picks})
