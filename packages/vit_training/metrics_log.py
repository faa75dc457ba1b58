"""Metrics to the console, a JSONL file, a CSV file and TensorBoard (when installed).

Only the main process writes. Every record is one JSON line
``{"split": "train" | "eval", "step": global_step, "epoch": e, "time_s": seconds since this
logger started, <name>: value, ...}``;
`metrics.csv` holds the same records in long format (split, step, epoch, name, value) so
columns never change mid-file.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("vit_training")


class MetricsLogger:
    """Append metrics records; a no-op on processes other than the main one.

    Args:
        output_dir: run folder; `metrics.jsonl`, `metrics.csv` and `tensorboard/` go there.
        enabled: True on the main process only.
        hparams: the flat resolved config, given to TensorBoard as text.
    """

    def __init__(self, output_dir: str | Path, enabled: bool, hparams: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.jsonl_path = self.output_dir / "metrics.jsonl"
        self.csv_path = self.output_dir / "metrics.csv"
        self._tensorboard = None
        self._start = time.perf_counter()
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        new_csv = not self.csv_path.exists()
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_csv:
            self._csv.writerow(["split", "step", "epoch", "name", "value"])
        try:  # optional: `pip install vitasks[tensorboard]`
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            SummaryWriter = None  # noqa: N806
        if SummaryWriter is not None:
            self._tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"))
            if hparams:
                text = "\n".join(f"    {key}: {value}" for key, value in sorted(hparams.items()))
                self._tensorboard.add_text("config", text)

    def log(self, split: str, step: int, epoch: int, metrics: dict[str, float], echo: bool = True) -> None:
        if not self.enabled:
            return
        elapsed = round(time.perf_counter() - self._start, 3)
        record = {"split": split, "step": step, "epoch": epoch, "time_s": elapsed,
                  **{k: float(v) for k, v in metrics.items()}}
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            self._csv.writerow([split, step, epoch, name, f"{float(value):.6g}"])
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(f"{split}/{name}", float(value), step)
        self._csv_file.flush()
        if echo:
            shown = "  ".join(f"{name} {float(value):.4g}" for name, value in metrics.items())
            logger.info("%s epoch %d step %d  %s", split, epoch, step, shown)

    def records(self) -> list[dict[str, Any]]:
        if not self.jsonl_path.exists():
            return []
        return [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if not self.enabled:
            return
        self._csv_file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
