"""A fourth task in one file: a linear probe on frozen ViT features that predicts an image's mean brightness.

What a task needs (docs/adding_a_task.md): a config with `train`, `optim` and `schedule`, a
`vit_training.Task` (model, data, loss, evaluation) and a `TaskCommands` spec; `run_task` then
gives it train / evaluate / predict / --print-config:

    python examples/linear_probe/linear_probe.py train --config brightness_cpu
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vit_backbone import BackboneConfig, build_backbone
from vit_training import OptimizerConfig, ScheduleConfig, Task, TaskCommands, TrainConfig, run_task


@dataclass
class ProbeConfig:
    """backbone: the shared ViT (frozen); layer: the block whose tokens are pooled; the rest: data and loop."""

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(preset="vit_micro_patch4_28"))
    layer: int = -1
    image_size: int = 28
    num_train: int = 256
    num_eval: int = 64
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class Brightness(Dataset):
    """Item i: a random grey image (1, S, S) in [0, 1] drawn from seed + i, and its mean brightness ()."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.count, self.size, self.seed = count, size, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(self.seed + index)
        image = (rng.uniform(0, 1) * rng.uniform(0.5, 1, (1, self.size, self.size))).astype(np.float32)
        return torch.from_numpy(image), torch.tensor(image.mean())


class LinearProbe(nn.Module):
    """(B, 1, S, S) images -> (B,) predictions: a linear head on the mean token of one frozen block."""

    def __init__(self, backbone: nn.Module, layer: int) -> None:
        super().__init__()
        self.backbone, self.layer = backbone.requires_grad_(False), layer
        self.head = nn.Linear(backbone.embed_dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_intermediates(images, indices=[self.layer], output_fmt="NLC")[0]  # (B, L, C)
        return self.head(tokens.mean(dim=1)).squeeze(-1)


class ProbeTask(Task):
    def __init__(self, config: ProbeConfig) -> None:
        self.config = config

    def build_model(self) -> nn.Module:
        backbone = BackboneConfig(**{**vars(self.config.backbone), "img_size": self.config.image_size, "in_chans": 1})
        return LinearProbe(build_backbone(backbone), self.config.layer)

    def build_train_dataset(self) -> Dataset:
        return Brightness(self.config.num_train, self.config.image_size, seed=0)

    def build_eval_dataset(self) -> Dataset:
        return Brightness(self.config.num_eval, self.config.image_size, seed=10**6)  # disjoint seeds

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        errors = model(batch[0]).float() - batch[1]
        # Logged values stay device tensors: the loop reads them at log steps only (no sync per step).
        return errors.pow(2).mean(), {"mae": errors.detach().abs().mean()}

    def evaluate(self, model: nn.Module, loader, accelerator, output_dir: Path) -> dict[str, float]:
        errors = [accelerator.gather_for_metrics(model(images).float() - targets) for images, targets in loader]
        errors = torch.cat(errors)
        return {"mse": float(errors.pow(2).mean()), "mae": float(errors.abs().mean())}


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="grey images (PNG, ...)")


def predict(args: argparse.Namespace, config: ProbeConfig, weights: Path, device: torch.device) -> int:
    from PIL import Image

    from vit_training.loop import load_weights_for_inference

    model = load_weights_for_inference(ProbeTask(config).build_model(), weights).to(device).eval()
    for path in args.images:
        image = Image.open(path).convert("L").resize((config.image_size, config.image_size))
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 255.0)[None, None].to(device)
        with torch.no_grad():
            print(f"{path}: brightness {float(model(pixels)):.3f}")
    return 0


COMMANDS = TaskCommands(
    name="linear_probe", description="A linear probe on frozen ViT features predicting mean brightness (example).",
    config_schema=ProbeConfig, config_folder="linear_probe", build_task=ProbeTask,
    headline=lambda metrics: f"mse {metrics['mse']:.5f}  mae {metrics['mae']:.4f}",
    predict=predict, add_predict_arguments=add_predict_arguments, predict_help="predict the brightness of images",
    unit="images", config_dirs=(Path(__file__).parent,),
)

if __name__ == "__main__":
    sys.exit(run_task(COMMANDS, prog="linear_probe.py"))
