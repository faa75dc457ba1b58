"""vit_training: the task-agnostic engine of vitasks.

Typed configs (`config`), AdamW parameter groups with layer-wise lr decay (`optim`) and
learning-rate schedules counted in optimizer steps (`schedule`). Imports `vit_backbone`,
never a task package. `loop.fit` trains any `task.Task`; `cli` is the one command line of
every task (`TaskCommands`, `run_task`, the ``vitasks`` console script); `data` holds the data
helpers every task shares (image and IDX readers, image listing, fixed subsets).
"""

# ruff: noqa: E402
import os

# The command line's environment, set before the imports below load timm (huggingface_hub reads
# HF_HUB_OFFLINE once, at import: timm must never reach a hub) and before any task package loads
# albumentations (which would ask PyPI for updates on import). A value the user exported wins.
for _name in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_OFFLINE"):
    os.environ.setdefault(_name, "1")

from .api import Predictor
from .cli import SubCommand, TaskCommands, format_metrics, run_task
from .config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    check_choices,
    config_to_dict,
    load_config,
    resolve_mixed_precision,
    save_config,
)
from .loop import FitResult, evaluate_weights, fit
from .optim import build_optimizer, find_vit, param_groups, vit_layer_id, weight_decay_exempt_names
from .schedule import build_scheduler, lr_factor_fn
from .task import Task, TrainableConfig

__all__ = [
    "ConfigError",
    "FitResult",
    "OptimizerConfig",
    "Predictor",
    "ScheduleConfig",
    "SubCommand",
    "Task",
    "TaskCommands",
    "TrainConfig",
    "TrainableConfig",
    "build_optimizer",
    "build_scheduler",
    "check_choices",
    "config_to_dict",
    "evaluate_weights",
    "find_vit",
    "fit",
    "format_metrics",
    "load_config",
    "lr_factor_fn",
    "param_groups",
    "resolve_mixed_precision",
    "run_task",
    "save_config",
    "vit_layer_id",
    "weight_decay_exempt_names",
]
