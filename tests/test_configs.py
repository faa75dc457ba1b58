"""Every shipped YAML config loads against its task's schema (no unknown keys, wrong types or
out-of-range values), so a config that drifts from the code fails here, not in a user's run."""

from __future__ import annotations

from pathlib import Path

import pytest

from vit_classification.config import ClassificationConfig
from vit_detection.config import DetectionConfig
from vit_segmentation.config import SegmentationConfig
from vit_training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"classification": ClassificationConfig, "detection": DetectionConfig, "segmentation": SegmentationConfig}
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


def test_every_task_ships_configs() -> None:
    assert {path.parent.name for path in CONFIGS} == set(SCHEMAS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_loads(path: Path) -> None:
    config = load_config(SCHEMAS[path.parent.name], path)
    assert config.train.epochs >= 1
    assert config.train.output_dir.startswith("runs/")
