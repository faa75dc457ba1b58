"""A tiny Task for testing the training engine without any real model or data.

Linear classification of Gaussian blobs with dropout (so training consumes the RNG, and an
exact resume must restore it). Runnable as a script so tests can launch it as a separate
process, kill it, or start it under `accelerate launch`:

    python tests/toy_task.py fit key=value ...       # train, print the final metrics as JSON
    python tests/toy_task.py evaluate WEIGHTS key=value ...
    python tests/toy_task.py cli train --config CONFIG.yaml key=value ...   # the CLI runner (`COMMANDS`)
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vit_training import OptimizerConfig, ScheduleConfig, TrainConfig, load_config
from vit_training.cli import TaskCommands, format_metrics, run_task


@dataclass
class ToyDataConfig:
    train_samples: int = 96
    eval_samples: int = 37  # not a multiple of batch x processes: padding would count twice
    classes: int = 3
    features: int = 8
    seconds_per_batch: float = 0.0  # slows training down so a test can kill it mid-run
    nan_at_call: int = -1  # the loss is NaN at this training call (counting from 0); -1 never
    eval_error: str = ""  # evaluate raises ValueError(eval_error) (a bad label read only at evaluation)
    eval_block_file: str = ""  # evaluate writes this file, then sleeps until the process is killed


@dataclass
class ToyConfig:
    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.05, weight_decay=0.01))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=2))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, batch_size=8, mixed_precision="no",
                                                                   log_every_steps=1))


class Blobs(Dataset):
    """`count` points around `classes` fixed centres; deterministic from `seed`."""

    def __init__(self, count: int, classes: int, features: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        centres = torch.randn(classes, features, generator=torch.Generator().manual_seed(0)) * 3
        self.labels = torch.randint(0, classes, (count,), generator=generator)
        self.points = centres[self.labels] + torch.randn(count, features, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[index], self.labels[index]


class ToyTask:
    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        self.calls = 0

    def build_model(self) -> nn.Module:
        data = self.config.data
        return nn.Sequential(nn.Linear(data.features, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, data.classes))

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        data = self.config.data
        return (Blobs(data.train_samples, data.classes, data.features, seed=1), self.build_eval_dataset())

    def build_eval_dataset(self) -> Dataset:
        data = self.config.data
        return Blobs(data.eval_samples, data.classes, data.features, seed=2)

    def collate_fn(self, train: bool) -> None:
        return None

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        points, labels = batch
        if self.config.data.seconds_per_batch:
            time.sleep(self.config.data.seconds_per_batch)
        logits = model(points)
        loss = F.cross_entropy(logits, labels)
        if self.calls == self.config.data.nan_at_call:
            loss = loss * math.nan
        self.calls += 1
        # A device tensor, as the real tasks log: the loop reads it at log steps only.
        return loss, {"acc": (logits.detach().argmax(1) == labels).float().mean()}

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Path) -> dict[str, float]:
        data = self.config.data
        if data.eval_error:
            raise ValueError(data.eval_error)
        if data.eval_block_file:
            Path(data.eval_block_file).write_text("evaluating\n")
            while True:
                time.sleep(1)
        losses, hits, count = 0.0, 0, 0
        for points, labels in loader:
            logits = model(points)
            per_sample = F.cross_entropy(logits, labels, reduction="none")
            per_sample, correct = accelerator.gather_for_metrics((per_sample, logits.argmax(1) == labels))
            losses += per_sample.sum().item()
            hits += int(correct.sum())
            count += len(correct)
        return {"loss": losses / count, "accuracy": hits / count, "samples": float(count)}

    def visualize(self, model: nn.Module, batch: Any, output_dir: Path) -> None:
        (output_dir / "visualized.txt").write_text(f"{len(batch[0])} samples\n")


def _no_predict(args: Any, config: Any, weights: Path, device: Any) -> int:
    raise ValueError("the toy task does not predict")


# The toy task's command line, for tests of the CLI runner (`run_task(COMMANDS, argv)`).
COMMANDS = TaskCommands(
    name="toy", description="toy task of the engine's tests", config_schema=ToyConfig, config_folder="toy",
    build_task=ToyTask, headline=format_metrics, predict=_no_predict, add_predict_arguments=lambda parser: None,
    evaluate_files=("toy_<mode>.txt",),
)


def main(argv: list[str]) -> None:
    from accelerate import PartialState

    from vit_training.cli import release_processes
    from vit_training.loop import evaluate_weights, fit

    command, rest = argv[0], argv[1:]
    if command == "cli":
        raise SystemExit(run_task(COMMANDS, rest))
    if command == "fit":
        config = load_config(ToyConfig, None, rest)
        result = fit(ToyTask(config), config)
        # Each process reports a digest of its own weights, to show the ranks stayed identical.
        rank = PartialState().process_index
        flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
        (result.output_dir / f"weights_rank{rank}.sha256").write_text(digest)
        if rank == 0:
            print(json.dumps({"metrics": result.metrics}))
    elif command == "evaluate":
        config = load_config(ToyConfig, None, rest[1:])
        metrics = evaluate_weights(ToyTask(config), config, rest[0])
        if PartialState().is_main_process:
            print(json.dumps({"metrics": metrics}))
    else:
        raise SystemExit(f"unknown command {command!r}")
    release_processes()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1:])
