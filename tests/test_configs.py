"""Every shipped YAML config loads against its task's schema (no unknown keys, wrong types or
out-of-range values), so a config that drifts from the code fails here, not in a user's run.

The tasks and their config folders come from the registered command lines
(`vit_training.cli.discover_tasks`), so a new task's configs are checked without an edit here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vit_training.cli import discover_tasks, find_config
from vit_training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TASKS = discover_tasks()
SCHEMAS = {spec.config_folder: spec.config_schema for spec in TASKS.values()}
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


def test_every_task_ships_configs() -> None:
    assert {path.parent.name for path in CONFIGS} == set(SCHEMAS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_loads(path: Path) -> None:
    config = load_config(SCHEMAS[path.parent.name], path)
    assert config.train.epochs >= 1
    assert config.train.output_dir.startswith("runs/")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_is_found_by_name(path: Path) -> None:
    spec = next(spec for spec in TASKS.values() if spec.config_folder == path.parent.name)
    assert find_config(spec, path.stem).resolve() == path.resolve()
