"""Every training and evaluation set is checked before the first step, through the command line.

A corrupt or missing training file stops the run with exit 1 and one stderr line naming the file,
before any checkpoint is written; ``data.on_bad_sample=skip`` leaves such training files out and
lists them in ``skipped_samples.txt`` of the run folder; a bad evaluation case (a segmentation
label out of range, a COCO box outside its image, an unknown category id) stops the run before
training whatever the policy; detection warns when ``model.num_queries`` is below the most
objects in one training image. Tiny generated data, a step or two of training at most.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from accelerate.state import AcceleratorState
from PIL import Image

from vit_training.cli import TaskCommands, discover_tasks, run_task
from vit_training.data import SKIPPED_SAMPLES_FILE

TASKS = discover_tasks()
# Tiny models and one optimizer step; the checks run before any of it.
CLASSIFY = ["train", "--config", "fashion_mnist_cpu", "model.backbone.depth=1", "data.format=imagefolder",
            "data.channels=1", "data.mean=[0.5]", "data.std=[0.5]", "data.input_size=32", "data.cache_samples=false",
            "train.batch_size=2", "train.epochs=1", "train.ema_decay=null"]
DETECT = ["train", "--config", "fashion_scenes_cpu", "model.backbone.depth=1", "model.enc_layers=1",
          "model.dec_layers=1", "data.train_sizes=[64]", "data.eval_size=64", "data.max_size=64",
          "train.batch_size=2", "train.epochs=1"]
SEGMENT = ["train", "--config", "mri_lobes_cpu", "model.backbone.depth=1", "data.format=synapse",
           "train.batch_size=2", "train.epochs=1"]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state; each in-process command builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(name: str, *argv: str) -> int:
    spec: TaskCommands = TASKS[name]
    return run_task(spec, list(argv), prog=f"{spec.name}.py")


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one error line on stderr (log lines, which start with a date, left out); no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line[:2].isdigit()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_checkpoint(run_dir: Path) -> bool:
    return not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------------ classification
def write_imagefolder(root: Path, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{label}{i}.png")


def test_classify_corrupt_training_image_stops_before_the_first_step(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_imagefolder(root)
    bad = root / "train" / "b" / "b1.png"
    bad.write_bytes(b"not a png")
    (root / "train" / "a" / "a2.png").write_bytes(b"")
    assert run("classify", *CLASSIFY, f"data.root={root}", f"train.output_dir={out}") == 1
    line = error_line(capsys)
    assert str(root / "train" / "a" / "a2.png") in line and "1 more" in line and "on_bad_sample=skip" in line
    assert no_checkpoint(out)


def test_classify_skip_trains_and_lists_the_file(tmp_path: Path) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_imagefolder(root)
    bad = root / "train" / "b" / "b1.png"
    bad.write_bytes(b"not a png")
    assert run("classify", *CLASSIFY, f"data.root={root}", f"train.output_dir={out}", "data.on_bad_sample=skip") == 0
    listed = (out / SKIPPED_SAMPLES_FILE).read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{bad}\t")


def test_classify_bad_evaluation_image_is_never_skipped(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_imagefolder(root)
    bad = root / "val" / "a" / "a0.png"
    bad.write_bytes(b"GIF89a truncated")
    assert run("classify", *CLASSIFY, f"data.root={root}", f"train.output_dir={out}", "data.on_bad_sample=skip") == 1
    assert str(bad) in error_line(capsys)
    assert no_checkpoint(out) and not (out / SKIPPED_SAMPLES_FILE).exists()
