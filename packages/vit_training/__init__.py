"""vit_training: the task-agnostic engine of vitasks.

Typed configs (`config`), AdamW parameter groups with layer-wise lr decay (`optim`) and
learning-rate schedules counted in optimizer steps (`schedule`). Imports `vit_backbone`,
never a task package. `loop.fit` trains any `task.Task`; `cli` is the one command line of
every task (`TaskCommands`, `run_task`, the ``vitasks`` console script); `data` holds the data
helpers every task shares (image and IDX readers, image listing, fixed subsets).
"""

import importlib
import os
from typing import Any

# albumentations asks PyPI for a newer version when it is imported; this only turns that version
# check off (every task's transforms module sets the same), so it is safe for library users too.
# HF_HUB_OFFLINE is NOT set here: a Python user's from_pretrained / push_to_hub must reach the Hub.
# The command line sets it (`vit_training.cli.main`, tasks/*.py) before timm is imported.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# The public names, imported from their modules on first use (PEP 562): importing `vit_training`
# or `vit_training.cli` loads no heavy library, so the command line can set its environment first.
_EXPORTS = {
    "Predictor": "api",
    **dict.fromkeys(("SubCommand", "TaskCommands", "format_metrics", "run_task"), "cli"),
    **dict.fromkeys(("ConfigError", "OptimizerConfig", "ScheduleConfig", "TrainConfig", "check_choices",
                     "config_to_dict", "load_config", "resolve_mixed_precision", "save_config"), "config"),
    **dict.fromkeys(("FitResult", "evaluate_weights", "fit"), "loop"),
    **dict.fromkeys(("build_optimizer", "find_vit", "param_groups", "vit_layer_id", "weight_decay_exempt_names"),
                    "optim"),
    **dict.fromkeys(("build_scheduler", "lr_factor_fn"), "schedule"),
    **dict.fromkeys(("Task", "TrainableConfig"), "task"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
