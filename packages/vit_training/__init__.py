"""vit_training: the task-agnostic engine of vitasks.

Typed configs (`config`), AdamW parameter groups with layer-wise lr decay (`optim`) and
learning-rate schedules counted in optimizer steps (`schedule`). Imports `vit_backbone`,
never a task package.
"""

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
from .optim import build_optimizer, find_vit, param_groups, vit_layer_id, weight_decay_exempt_names
from .schedule import build_scheduler, lr_factor_fn

__all__ = [
    "ConfigError",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "build_optimizer",
    "build_scheduler",
    "check_choices",
    "config_to_dict",
    "find_vit",
    "load_config",
    "lr_factor_fn",
    "param_groups",
    "resolve_mixed_precision",
    "save_config",
    "vit_layer_id",
    "weight_decay_exempt_names",
]
