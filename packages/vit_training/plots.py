"""Loss and metric curves as PNG, drawn from the metrics records at the end of a run.

Related scalars share a panel, so a person reads one figure instead of dozens: the losses
(the total and its terms), COCO's AP family, its AR family, the learning rate, Dice, HD95,
accuracy; anything else gets a panel of its own. Values a metric uses as "not defined"
(COCOeval's -1 for an area range without objects, NaN) are left out, and a series of one
point is drawn as a marker so it does not vanish.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["PANELS", "curves_figure", "panel_of", "plot_curves"]

SKIPPED = {"split", "step", "epoch", "time_s"}
SENTINEL = -1.0  # COCOeval's value for "no ground truth in this range"
# (panel title, test on the metric name), first match wins; the order is the panels' order.
PANELS: list[tuple[str, re.Pattern[str]]] = [
    # the total and its terms: loss_ce, loss_bbox, dice_loss, the segmentation task's "ce"
    ("loss", re.compile(r"loss|(^|_)ce(_|$)", re.IGNORECASE)),
    ("COCO AP", re.compile(r"^AP")),
    ("COCO AR", re.compile(r"^AR")),
    ("learning rate", re.compile(r"^lr$")),
    ("Dice", re.compile(r"(^|/)mean_dice$")),
    ("Dice per class", re.compile(r"(^|/)dice/")),
    ("HD95", re.compile(r"(^|/)mean_hd95$")),
    ("HD95 per class", re.compile(r"(^|/)hd95/")),
    ("accuracy", re.compile(r"(^|/)(top\d+|acc|accuracy|mean_class_acc)$")),
    ("errors", re.compile(r"_error$")),
    ("empty masks left out", re.compile(r"(^|/)excluded/")),
]


def panel_of(name: str) -> str:
    """The panel title a metric is drawn in: its group's (`PANELS`), else its own name."""
    for title, pattern in PANELS:
        if pattern.search(name):
            return title
    return name


def _defined(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value) and value != SENTINEL


def curves_figure(records: list[dict[str, Any]]) -> Figure | None:
    """The figure of `records` (metrics.jsonl lines): one panel per group, x = optimizer step. None when empty.

    Each panel holds one line per (split, metric) of its group, labelled "<split> <metric>"
    (just the split where the panel holds one metric).
    """
    # panel -> (split, name) -> (steps, values)
    panels: dict[str, dict[tuple[str, str], tuple[list[float], list[float]]]] = {}
    for record in records:
        for name, value in record.items():
            if name in SKIPPED or not _defined(value):
                continue
            steps, values = panels.setdefault(panel_of(name), {}).setdefault((record["split"], name), ([], []))
            steps.append(record["step"])
            values.append(value)
    if not panels:
        return None
    order = {title: index for index, (title, _) in enumerate(PANELS)}
    titles = sorted(panels, key=lambda title: (order.get(title, len(order)), title))
    columns = min(3, len(titles))
    rows = (len(titles) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.4 * rows), squeeze=False)
    for axis, title in zip(axes.flat, titles, strict=False):
        series = panels[title]
        names = {name for _, name in series}
        for (split, name), (steps, values) in sorted(series.items()):
            label = split if len(names) == 1 else f"{split} {name}"
            marker = "o" if split == "eval" or len(steps) == 1 else None
            axis.plot(steps, values, marker=marker, markersize=3, label=label)
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    for axis in list(axes.flat)[len(titles):]:
        axis.axis("off")
    figure.tight_layout()
    return figure


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Write `curves_figure(records)` as a PNG at `path`. None (and no file) when there is nothing to plot."""
    figure = curves_figure(records)
    if figure is None:
        return None
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
