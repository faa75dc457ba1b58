"""Loss and metric curves as PNG, drawn from the metrics records at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

SKIPPED = {"split", "step", "epoch", "time_s"}


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """One panel per metric name, x = optimizer step, one line per split. None when nothing to plot."""
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for record in records:
        for name, value in record.items():
            if name in SKIPPED:
                continue
            steps, values = series.setdefault(name, {}).setdefault(record["split"], ([], []))
            steps.append(record["step"])
            values.append(value)
    if not series:
        return None
    names = sorted(series, key=lambda n: (n != "loss", n))
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        for split, (steps, values) in sorted(series[name].items()):
            axis.plot(steps, values, marker="o" if split == "eval" else None, markersize=3, label=split)
        axis.set_title(name)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
