"""The training step of each task on generated in-memory data, shared by `gpu_suite.py`, `compile_cpu.py`
and the tests of host-device syncs and `torch.compile`.

A case is a task config (a recipe YAML plus overrides), a batch size and a way to draw batches of
the recipe's sizes; `build_task` makes the task without any data on disk (class names are given,
pretrained weights switched off) and `make_batches` draws a few batches as the task's collation
returns them. `SyncCounter` counts the host-device synchronisations a piece of code makes, on
any device (the test's CPU included).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from vit_training import Task
from vit_training.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StepCase:
    """One benchmarked training step.

    Attributes:
        name: the case's name in tables and JSON.
        task: ``classification``, ``detection`` or ``segmentation``.
        config: the recipe's YAML, relative to the repository root.
        batch_size: images per step and process.
        overrides: ``key=value`` overrides on top of the YAML.
        image_sizes: (min, max) shorter side of the generated images (detection draws each image's
            size like DETR's multi-scale resize; the other tasks use the config's input size).
    """

    name: str
    task: str
    config: str
    batch_size: int
    overrides: tuple[str, ...] = ()
    image_sizes: tuple[int, int] | None = None
    max_size: int = 1333
    notes: dict[str, Any] = field(default_factory=dict)


# The three GPU recipes at their published sizes (random init: no checkpoints are read).
GPU_CASES = (
    StepCase("classification ViT-B/16 224 b128", "classification",
             "configs/classification/imagenet_vit_b16_finetune.yaml", 128,
             ("model.backbone.pretrained=null",)),
    StepCase("detection DETR ViT-B/16 COCO b2", "detection", "configs/detection/coco_vit_b16.yaml", 2,
             ("model.backbone.pretrained=null",), image_sizes=(480, 800)),
    StepCase("detection DETR ViT-B/16 COCO b8", "detection", "configs/detection/coco_vit_b16.yaml", 8,
             ("model.backbone.pretrained=null",), image_sizes=(480, 800)),
    StepCase("segmentation TransUNet R50-ViT-B/16 224 b24", "segmentation",
             "configs/segmentation/synapse_r50_vit_b16.yaml", 24, ("model.backbone.pretrained=null",)),
)

_TINY_VIT = ("model.backbone.depth=2", "model.backbone.embed_dim=64", "model.backbone.num_heads=2")

# The same recipes with tiny models and small images: the same code paths in seconds on a CPU.
SMOKE_CASES = (
    StepCase("classification tiny 32 b4", "classification", "configs/classification/imagenet_vit_b16_finetune.yaml", 4,
             ("model.backbone.pretrained=null", *_TINY_VIT, "data.input_size=32", "model.backbone.patch_size=8")),
    StepCase("detection tiny b2", "detection", "configs/detection/coco_vit_b16.yaml", 2,
             ("model.backbone.pretrained=null", *_TINY_VIT, "model.backbone.patch_size=8", "model.backbone.img_size=64",
              "model.hidden_dim=32", "model.num_heads=2", "model.dim_feedforward=64", "model.num_queries=10",
              "model.enc_layers=1", "model.dec_layers=2"), image_sizes=(48, 80), max_size=112),
    StepCase("segmentation tiny 32 b4", "segmentation", "configs/segmentation/synapse_r50_vit_b16.yaml", 4,
             ("model.backbone.pretrained=null", "model.backbone.hybrid_layers=[1,1]", "model.backbone.embed_dim=32",
              "model.backbone.depth=1", "model.backbone.num_heads=2", "model.n_skip=2", "model.decoder_channels=[16,8,8]",
              "model.head_channels=16", "data.input_size=[32,32]")),
)

# The CPU recipes' models (the demo configs), for compile_cpu.py: small but real.
CPU_CASES = (
    StepCase("classification fashion_mnist_cpu b64", "classification",
             "configs/classification/fashion_mnist_cpu.yaml", 64, ("model.backbone.pretrained=null",)),
    StepCase("detection fashion_scenes_cpu b8", "detection", "configs/detection/fashion_scenes_cpu.yaml", 8,
             ("model.backbone.pretrained=null",), image_sizes=(64, 96), max_size=96),
    StepCase("segmentation mri_lobes_cpu b16", "segmentation", "configs/segmentation/mri_lobes_cpu.yaml", 16,
             ("model.backbone.pretrained=null",)),
)


def build_task(case: StepCase, *extra: str) -> Task:
    """The case's task, made without data: class names given, the run folder a scratch name."""
    overrides = [*case.overrides, *extra]
    if case.task == "classification":
        from vit_classification.config import ClassificationConfig
        from vit_classification.task import ClassificationTask

        config = load_config(ClassificationConfig, ROOT / case.config, overrides)
        classes = config.model.num_classes or (10 if config.data.format == "fashion_mnist" else 1000)
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, class_names=[f"class_{i}" for i in range(classes)]))
        return ClassificationTask(config)
    if case.task == "detection":
        from vit_detection.config import DetectionConfig
        from vit_detection.task import DetectionTask

        config = load_config(DetectionConfig, ROOT / case.config, overrides)
        classes = config.model.num_classes or 80  # COCO's 80 categories
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, class_names=[f"class_{i}" for i in range(classes)], category_ids=list(range(1, classes + 1))))
        return DetectionTask(config)
    if case.task == "segmentation":
        from vit_segmentation.config import SegmentationConfig
        from vit_segmentation.task import SegmentationTask

        config = load_config(SegmentationConfig, ROOT / case.config, overrides)
        return SegmentationTask(config)
    raise ValueError(f"unknown task {case.task!r}: expected classification, detection or segmentation")


def _input_hw(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _detection_item(case: StepCase, generator: torch.Generator, index: int) -> tuple[torch.Tensor, dict]:
    """One image at a size DETR's multi-scale resize gives a 4:3 photo (either orientation), ~7 boxes (COCO's mean)."""
    low, high = case.image_sizes or (480, 800)
    short = int(torch.randint(low, high + 1, (1,), generator=generator))
    long = min(int(short * 4 / 3), case.max_size)
    height, width = (short, long) if torch.rand((), generator=generator) < 0.7 else (long, short)
    count = int(torch.randint(1, 14, (1,), generator=generator))
    centres = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
    return torch.randn(3, height, width, generator=generator), {
        "boxes": torch.cat([centres, sizes], dim=1),
        "labels": torch.randint(0, 80, (count,), generator=generator),
        "image_id": index,
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([height, width]),
    }


def make_batches(task: Task, case: StepCase, count: int, seed: int = 0) -> list[Any]:
    """`count` generated batches of the case's sizes, as the task's training collation returns them (on the CPU)."""
    generator = torch.Generator().manual_seed(seed)
    config = task.config
    batches: list[Any] = []
    for number in range(count):
        size = case.batch_size
        if case.task == "classification":
            height, width = _input_hw(config.data.input_size)
            classes = config.model.num_classes
            batches.append((torch.randn(size, config.data.channels, height, width, generator=generator),
                            torch.randint(0, classes, (size,), generator=generator),
                            torch.arange(number * size, (number + 1) * size)))
        elif case.task == "detection":
            items = [_detection_item(case, generator, number * size + i) for i in range(size)]
            for _, target in items:
                target["labels"] = target["labels"] % config.model.num_classes
            batches.append(task.collate_fn(True)(items))
        else:
            height, width = _input_hw(config.data.input_size)
            channels = 1
            batches.append((torch.rand(size, channels, height, width, generator=generator),
                            torch.randint(0, config.model.num_classes, (size, height, width), generator=generator)))
    return batches


# ------------------------------------------------------------------------------------------ syncs
# Tensor methods that copy a device tensor's values to the host and so wait for the device.
_SYNC_METHODS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "nonzero",
                 "unique", "masked_select"}
_SYNC_FUNCTIONS = {torch.nonzero, torch.unique, torch.masked_select}


def _method_name(func: Callable) -> str:
    return getattr(func, "__name__", "")


class SyncCounter(TorchFunctionMode):
    """Counts the host-device synchronisations of the code run under it, also on a CPU.

    A tensor counts as "on the device" when it was marked (`mark`: the batch, the parameters), made
    from a device tensor by a torch function, or made by a factory given an explicit `device=`;
    `.cpu()` and `.numpy()` results are host tensors. A sync is one of `_SYNC_METHODS` (a value
    read: `.item()`, `.tolist()`, `bool()`, `float()`, `.cpu()`, ...; data-dependent shapes:
    `nonzero`, `unique`, `masked_select`, boolean-mask indexing) called on a device tensor; what
    the code then does with host tensors costs nothing. `events` lists (name, caller) per sync.
    """

    def __init__(self) -> None:
        super().__init__()
        self._device_ids: set[int] = set()
        self._keep: list[torch.Tensor] = []  # keeps marked tensors alive so their ids stay theirs
        self._parameters: list[torch.Tensor] = []  # their gradients are device tensors too
        self.events: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        return len(self.events)

    def mark(self, *trees: Any) -> None:
        """Mark every tensor in `trees` (batches, modules' parameters and buffers) as a device tensor."""
        for tree in trees:
            if isinstance(tree, torch.nn.Module):
                tensors = [*tree.parameters(), *tree.buffers()]
                self._parameters.extend(tree.parameters())
            else:
                tensors = [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]
            for tensor in tensors:
                self._device_ids.add(id(tensor))
                self._keep.append(tensor)

    def _on_device(self, tensor: Any) -> bool:
        if not isinstance(tensor, torch.Tensor):
            return False
        if id(tensor) in self._device_ids:
            return True
        # Gradients are made by autograd, out of sight of the mode.
        return any(parameter.grad is tensor for parameter in self._parameters)

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inputs = [leaf for leaf in pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        from_device = any(self._on_device(tensor) for tensor in inputs)
        name = _method_name(func)
        is_sync = from_device and (name in _SYNC_METHODS or func in _SYNC_FUNCTIONS)
        if (from_device and name == "__getitem__" and len(args) > 1
                and any(isinstance(leaf, torch.Tensor) and leaf.dtype == torch.bool
                        for leaf in pytree.tree_leaves(args[1]))):
            is_sync = True  # boolean-mask indexing: the result's size is read from the device
        if is_sync:
            import traceback

            caller = next((f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.name}"
                           for frame in reversed(traceback.extract_stack()[:-1])
                           if "step_cases.py" not in frame.filename and "/torch/" not in frame.filename), "?")
            self.events.append((name, caller))
        result = func(*args, **kwargs)
        if name == "cpu" and from_device and result is args[0]:
            result = result.clone()  # on a CPU `.cpu()` returns the tensor itself; a device's copy is a new one
        makes_device = from_device and name not in ("cpu", "numpy", "tolist", "item")
        if not from_device and kwargs.get("device") is not None:
            makes_device = True
        if makes_device:
            for leaf in pytree.tree_leaves(result):
                if isinstance(leaf, torch.Tensor) and id(leaf) not in self._device_ids:
                    self._device_ids.add(id(leaf))
                    self._keep.append(leaf)
        return result


def finite_positive(value: Any) -> bool:
    """True for a finite number > 0."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ------------------------------------------------------------------------------------------ the step
@dataclass
class PreparedStep:
    """What `vit_training.loop.fit` builds before its first step, for one task (see `prepare_step`)."""

    task: Task
    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    ema: Any

    def step(self, batch: Any) -> Any:
        """One training batch through the loop's own `train_step`; returns its `StepResult`."""
        from vit_training.loop import train_step

        return train_step(self.task, self.model, batch, self.accelerator, self.optimizer, self.scheduler,
                          clip_grad_norm=self.task.config.train.clip_grad_norm, ema=self.ema)


def prepare_step(task: Task, horizon: int = 1000) -> PreparedStep:
    """Accelerator, model, optimizer, schedule and EMA as `fit` makes them (`train.compile` included).

    The schedule runs over `horizon` optimizer steps (one step per "epoch": only its shape matters here).
    """
    from vit_training.ema import ModelEma
    from vit_training.loop import build_accelerator, compile_model
    from vit_training.optim import build_optimizer
    from vit_training.schedule import build_scheduler, fit_warmup

    config = task.config
    accelerator = build_accelerator(config.train)
    model = task.build_model()
    optimizer = build_optimizer(model, config.optim, device_type=accelerator.device.type)
    model = compile_model(model, config.train)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule, _ = fit_warmup(config.schedule, horizon, 1)
    scheduler = build_scheduler(optimizer.optimizer, schedule, horizon, 1)
    ema = None
    if config.train.ema_decay:
        ema = ModelEma(accelerator.unwrap_model(model), config.train.ema_decay, config.train.ema_warmup)
    model.train()
    return PreparedStep(task, accelerator, model, optimizer, scheduler, ema)


def reset_accelerate_state() -> None:
    """Forget the process's Accelerate state, so the next Accelerator can take other settings."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
