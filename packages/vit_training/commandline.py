"""The ``vitasks`` console script's entry: the command line's environment first, then `vit_training.cli.main`.

huggingface_hub reads ``HF_HUB_OFFLINE`` once, when imported, and `vit_training.cli` already
imports timm (through the configs' backbone), so the environment is set here, before that import.
Importing `vit_training` itself is lazy and loads nothing heavy. Library users never import this
module: their ``from_pretrained`` / ``push_to_hub`` stay online.
"""

# ruff: noqa: E402
import os

# A command never reaches a hub (timm's model factory would ask it); a value the user exported wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .cli import main, run_task, set_command_environment

__all__ = ["main", "run_task", "set_command_environment"]
