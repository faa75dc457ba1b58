"""The run's metrics: always `metrics.jsonl` and `metrics.csv` in the run folder, and the trackers of `train.log_with`.

The two local files are the record every tool of this project reads (plots, benchmarks); the
trackers (TensorBoard, Weights & Biases, MLflow, ...) are Accelerate's own, started by the loop
with `Accelerator(log_with=..., project_dir=output_dir)` and fed here through `Accelerator.log`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError

logger = logging.getLogger("vit_training")

__all__ = ["MetricsLogger", "check_trackers"]


def check_trackers(names: Sequence[str]) -> list[str]:
    """The tracker names of `train.log_with`, checked: each known to Accelerate and installed.

    Raises:
        ConfigError: one line naming the tracker and what would be valid (or what to install).
    """
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = sorted(str(kind) for kind in LoggerType if str(kind) != "all")
    available = {str(kind) for kind in get_available_trackers()}
    for name in names:
        if name not in known:
            raise ConfigError(f"train.log_with: unknown tracker {name!r}; expected some of {', '.join(known)}")
        if name not in available:
            raise ConfigError(f"train.log_with: tracker {name!r} is not installed (pip install {name})")
    return list(names)


class MetricsLogger:
    """Append metrics records; a no-op on processes other than the main one.

    Args:
        output_dir: run folder; `metrics.jsonl` and `metrics.csv` go there.
        enabled: True on the main process only.
        tracker: called as ``tracker(values, step)`` with ``{"<split>/<name>": value}`` for every
            record (the loop passes `Accelerator.log`); None for the local files only.
        clock: seconds since the run started, each record's `time_s` (the loop counts from the
            start of `fit`, plus the time of the runs a resumed run continues); None: seconds
            since this logger was created.
    """

    def __init__(self, output_dir: str | Path, enabled: bool,
                 tracker: Callable[[dict[str, float], int], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.jsonl_path = self.output_dir / "metrics.jsonl"
        self.csv_path = self.output_dir / "metrics.csv"
        self._tracker = tracker
        if clock is None:
            start = time.perf_counter()
            clock = lambda: time.perf_counter() - start  # noqa: E731
        self._clock = clock
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        new_csv = not self.csv_path.exists()
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_csv:
            self._csv.writerow(["split", "step", "epoch", "name", "value"])

    def log(self, split: str, step: int, epoch: int, metrics: dict[str, float], echo: bool = True,
            note: str = "") -> None:
        """Record `metrics` of `split` ("train", "eval") at optimizer step `step`; `echo` also logs one line."""
        if not self.enabled:
            return
        elapsed = round(self._clock(), 3)
        values = {name: float(value) for name, value in metrics.items()}
        record = {"split": split, "step": step, "epoch": epoch, "time_s": elapsed, **values}
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in values.items():
            self._csv.writerow([split, step, epoch, name, f"{value:.6g}"])
        self._csv_file.flush()
        if self._tracker is not None:
            self._tracker({f"{split}/{name}": value for name, value in values.items()}, step)
        if echo:
            shown = "  ".join(f"{name} {value:.4g}" for name, value in values.items())
            logger.info("%s epoch %d step %d%s  %s", split, epoch, step, note, shown)

    def records(self) -> list[dict[str, Any]]:
        if not self.jsonl_path.exists():
            return []
        return [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if not self.enabled:
            return
        self._csv_file.close()
