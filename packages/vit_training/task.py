"""What the training loop needs from a task: the `Task` base class and the `TrainableConfig` it trains with.

Each task package (classification, detection, segmentation, and any new one) subclasses `Task`;
`vit_training.loop.fit` runs any of them with the same explicit loop. The loop owns devices,
mixed precision, distribution, checkpoints and logging; the task owns the model, the data and
the meaning of a batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import OptimizerConfig, ScheduleConfig, TrainConfig

__all__ = ["Scalar", "Task", "TrainableConfig"]

# A value `Task.loss` hands to the log: a detached 0-d tensor (read lazily, at log steps) or a number.
Scalar = float | torch.Tensor


@runtime_checkable
class TrainableConfig(Protocol):
    """The part of a task's config dataclass that `fit` reads (the rest belongs to the task).

    Attributes:
        train: the loop's settings (epochs, batch size, precision, checkpoints, run folder).
        optim: the optimizer (`vit_training.optim.build_optimizer`).
        schedule: the learning-rate schedule (`vit_training.schedule.build_scheduler`).
    """

    train: TrainConfig
    optim: OptimizerConfig
    schedule: ScheduleConfig


class Task(ABC):
    """The contract between a task package and `vit_training.loop.fit`.

    Subclasses implement `build_model`, `build_train_dataset`, `build_eval_dataset`, `loss` and
    `evaluate`; `collate_fn` (default collation), `visualize` (nothing) and `eval_batch_size`
    (None: `train.batch_size`) have defaults. A task evaluating in other units than it trains on
    sets `eval_batch_size` (e.g. one volume per batch where training takes 2D slices).

    Datasets may define `set_epoch(epoch)`; the loop calls it before every epoch so that
    per-sample random augmentations can be seeded from (seed, epoch, index) and a resumed run
    sees exactly the samples an uninterrupted one would.

    Attributes:
        config: the task's config (a `TrainableConfig`), the one to pass to `fit`.
    """

    config: Any
    eval_batch_size: int | None = None

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model to train, on the CPU, in fp32 (the loop moves and wraps it)."""

    @abstractmethod
    def build_train_dataset(self) -> Dataset:
        """The training set."""

    @abstractmethod
    def build_eval_dataset(self) -> Dataset | None:
        """The evaluation set, or None when the config names none."""

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """(training set, evaluation set or None)."""
        return self.build_train_dataset(), self.build_eval_dataset()

    def collate_fn(self, train: bool) -> Callable[[list[Any]], Any] | None:
        """Batch collation for the training (`train=True`) or evaluation loader; None for the default."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Scalar]]:
        """The scalar training loss of one batch and extra scalars to log (e.g. accuracy).

        Runs inside the loop's autocast and gradient-accumulation context; `batch` is already on
        the device. Return the scalars to log as detached 0-d tensors (floats are accepted): the
        loop reads them only at log steps, all in one host-device sync, so a step costs no more
        than the non-finite guard's one read of the loss. Calling `.item()`, `float()` or
        `bool()` on a device tensor here stalls every step until the device catches up.
        """

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, output_dir: Path
                 ) -> dict[str, float]:
        """Metrics over the whole (prepared, possibly sharded) `loader`.

        Must gather predictions with `accelerator.gather_for_metrics` so every sample counts once
        across processes; every process gets the same metrics back. May write files (confusion
        matrix, predictions) to `output_dir` on the main process.
        """

    def visualize(self, model: nn.Module, batch: Any, output_dir: Path) -> None:
        """Write a picture of a few predictions of `batch` to `output_dir` (main process only); default none."""
        return None
