"""What the training loop needs from a task.

Each task package (classification, detection, segmentation) exposes one object with these
methods; `vit_training.loop.fit` runs any of them with the same explicit loop. The loop owns
devices, mixed precision, distribution, checkpoints and logging; the task owns the model, the
data and the meaning of a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset


@runtime_checkable
class Task(Protocol):
    """The contract between a task package and `vit_training.loop.fit`.

    A task may set an attribute `eval_batch_size` (int) when its evaluation loader should batch
    differently from training (e.g. one volume per batch); otherwise `train.batch_size` is used.

    Datasets may define `set_epoch(epoch)`; the loop calls it before every epoch so that
    per-sample random augmentations can be seeded from (seed, epoch, index) and a resumed run
    sees exactly the samples an uninterrupted one would.
    """

    def build_model(self) -> nn.Module:
        """The model to train, on the CPU, in fp32 (the loop moves and wraps it)."""
        ...

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """(training set, evaluation set or None)."""
        ...

    def collate_fn(self, train: bool) -> Callable[[list[Any]], Any] | None:
        """Batch collation for the training (`train=True`) or evaluation loader; None for the default."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar training loss of one batch and extra scalars to log (e.g. accuracy).

        Runs inside the loop's autocast and gradient-accumulation context; `batch` is already on
        the device.
        """
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, output_dir: Path
                 ) -> dict[str, float]:
        """Metrics over the whole (prepared, possibly sharded) `loader`.

        Must gather predictions with `accelerator.gather_for_metrics` so every sample counts once
        across processes; every process gets the same metrics back. May write files (confusion
        matrix, predictions) to `output_dir` on the main process.
        """
        ...

    def visualize(self, model: nn.Module, batch: Any, output_dir: Path) -> None:
        """Write a picture of a few predictions of `batch` to `output_dir` (main process only)."""
        ...
