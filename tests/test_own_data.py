"""The shipped own-data recipes, run as a user would: `train --config <recipe>` on a folder in the
real format, then `evaluate` and `predict` on the run folder, all through the CLI runner.

- classification: `imagefolder` on a PNG ImageFolder tree (train/<class>/, val/<class>/);
- detection: `coco_folder` on a COCO folder (PNG images + instances JSONs for train and val);
- segmentation: `nifti_folder` on an MSD / nnU-Net folder (imagesTr/<case>_0000.nii.gz,
  labelsTr/<case>.nii.gz) that the tool splits into training and evaluation cases
  (`data.val_fraction`, written to split.json).

The overrides name only the data, the run folder and a tiny size / epoch count, so the recipes'
own keys are what gets tested. Every step takes a few seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from accelerate.state import AcceleratorState
from PIL import Image

from vit_segmentation.config import SegmentationConfig
from vit_segmentation.task import SegmentationTask, split_cases
from vit_training.cli import discover_tasks, run_task
from vit_training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TASKS = discover_tasks()
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TINY = ["train.epochs=1", "train.batch_size=4", "train.mixed_precision=no", "model.backbone.depth=1"]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state; each in-process command builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(task: str, *argv: str) -> int:
    AcceleratorState._reset_state(reset_partial_state=True)
    return run_task(TASKS[task], list(argv), prog=f"{task}.py")


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip() and not line[:2].isdigit()]  # minus log lines


def assert_run_folder(run_dir: Path) -> None:
    assert (run_dir / "model.safetensors").is_file()
    assert (run_dir / "config.yaml").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row for row in rows if row.get("split") == "eval"]  # the held-out set was evaluated


# ------------------------------------------------------------------------------------------ classification
def write_imagefolder(root: Path, per_class: dict[str, int]) -> None:
    """root/<split>/<class>/<i>.png: 20 x 20 RGB squares of the class colour plus noise."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_recipe_trains_evaluates_and_predicts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run_dir = tmp_path / "photos", tmp_path / "run"
    write_imagefolder(data, {"train": 4, "val": 2})
    assert run("classify", "train", "--config", "imagefolder", f"data.root={data}", f"train.output_dir={run_dir}",
               "data.input_size=16", *TINY) == 0
    assert_run_folder(run_dir)
    saved = load_config(TASKS["classify"].config_schema, run_dir / "config.yaml")
    assert saved.data.class_names == ["blue", "green", "red"] and saved.model.num_classes == 3

    assert run("classify", "evaluate", "--weights", str(run_dir)) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 6

    out = tmp_path / "predictions.csv"
    assert run("classify", "predict", "--weights", str(run_dir), str(data / "val" / "red"), "--output", str(out),
               "--cpu") == 0
    assert len(out.read_text().splitlines()) == 1 + 2  # header + the two red validation images
    capsys.readouterr()

    # A root without train/: one line naming the folder, exit 1.
    assert run("classify", "train", "--config", "imagefolder", f"data.root={tmp_path / 'empty'}",
               f"train.output_dir={tmp_path / 'run2'}", *TINY) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "empty" in lines[0], lines


# ------------------------------------------------------------------------------------------ detection
def write_coco_split(root: Path, split: str, count: int, seed: int) -> None:
    """root/<split>/<i>.png (64 x 64) and root/annotations/instances_<split>.json: one or two coloured
    boxes an image, categories 4 ("square") and 9 ("bar")."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / split).mkdir(parents=True)
    for i in range(count):
        pixels = np.full((64, 64, 3), 90, np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            category = int(rng.choice([4, 9]))
            w, h = (20, 20) if category == 4 else (30, 10)
            x, y = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
            pixels[y:y + h, x:x + w] = (230, 200, 20) if category == 4 else (20, 200, 230)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels).save(root / split / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64})
    (root / "annotations").mkdir(exist_ok=True)
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 9, "name": "bar"}, {"id": 4, "name": "square"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


def test_coco_folder_recipe_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    data, run_dir = tmp_path / "boxes", tmp_path / "run"
    write_coco_split(data, "train", 8, seed=0)
    write_coco_split(data, "val", 3, seed=1)
    # 64 px at stride 8: 64 encoder cells, enough for the recipe's 30 two-stage queries.
    assert run("detect", "train", "--config", "coco_folder", f"data.root={data}", f"train.output_dir={run_dir}",
               "data.train_sizes=[64]", "data.eval_size=64", "data.max_size=64", "model.backbone.img_size=64",
               *TINY) == 0
    assert_run_folder(run_dir)
    saved = load_config(TASKS["detect"].config_schema, run_dir / "config.yaml")
    assert saved.data.class_names == ["square", "bar"] and saved.data.category_ids == [4, 9]

    assert run("detect", "evaluate", "--weights", str(run_dir)) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 3 and "AP50" in metrics

    out = tmp_path / "detections"
    assert run("detect", "predict", "--weights", str(run_dir), str(data / "val" / "0.png"), "--output", str(out),
               "--cpu") == 0
    rows = json.loads((out / "detections.json").read_text())
    assert rows[0]["file"].endswith("0.png")
    assert {d["category_id"] for d in rows[0]["detections"]} <= {4, 9}


# ------------------------------------------------------------------------------------------ segmentation
CASES = [f"scan_{i:03d}" for i in range(5)]


def write_nifti_folder(root: Path, cases: list[str]) -> None:
    """MSD / nnU-Net layout: imagesTr/<case>_0000.nii.gz (MR-like intensities) and labelsTr/<case>.nii.gz,
    24 x 24 x 4 voxels, a bright square labelled 1."""
    rng = np.random.default_rng(2)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for case in cases:
        labels = np.zeros((24, 24, 4), np.uint8)
        x, y = rng.integers(2, 12, size=2)
        labels[x:x + 10, y:y + 10, :] = 1
        image = 300 + 500 * labels.astype(np.float32) + rng.normal(0, 40, labels.shape)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / f"{case}.nii.gz")


def test_nifti_folder_recipe_splits_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    data, run_dir = tmp_path / "scans", tmp_path / "run"
    write_nifti_folder(data, CASES)
    assert run("segment", "train", "--config", "nifti_folder", f"data.root={data}", f"train.output_dir={run_dir}",
               "data.val_fraction=0.4", "data.input_size=[32,32]", *TINY) == 0
    assert_run_folder(run_dir)
    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"] == "val_fraction" and split["val_fraction"] == 0.4 and split["seed"] == 0
    assert len(split["eval"]) == 2 and len(split["train"]) == 3  # round(0.4 * 5) whole cases
    assert not set(split["train"]) & set(split["eval"]) and sorted(split["train"] + split["eval"]) == CASES
    assert (split["train"], split["eval"]) == split_cases(CASES, 0.4, seed=0)

    # The drawn cases are in the run's config: evaluate finds the same ones, also after the folder grows
    # (a new draw over six cases could pick a case the model trained on).
    saved = load_config(SegmentationConfig, run_dir / "config.yaml")
    assert saved.data.eval_cases == split["eval"]
    write_nifti_folder(tmp_path / "more", ["scan_005"])
    for folder, name in (("imagesTr", "scan_005_0000.nii.gz"), ("labelsTr", "scan_005.nii.gz")):
        (tmp_path / "more" / folder / name).rename(data / folder / name)
    assert run("segment", "evaluate", "--weights", str(run_dir)) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["cases"] == 2
    rows = (run_dir / "eval" / "per_case_standard.csv").read_text().splitlines()
    assert sorted(row.split(",")[0] for row in rows[1:]) == split["eval"]

    out = tmp_path / "predicted"
    scan = data / "imagesTr" / f"{split['eval'][0]}_0000.nii.gz"
    assert run("segment", "predict", "--weights", str(run_dir), str(scan), "--output", str(out), "--cpu") == 0
    predicted = nib.load(out / f"{split['eval'][0]}.nii.gz")  # nnU-Net's naming: <case>.nii.gz
    assert predicted.shape == (24, 24, 4)
    np.testing.assert_allclose(predicted.affine, nib.load(scan).affine)


def test_split_cases_is_seeded_by_case_and_keeps_one_on_each_side() -> None:
    names = [f"c{i}" for i in range(10)]
    train, evaluation = split_cases(names, 0.2, seed=0)
    assert len(evaluation) == 2 and sorted(train + evaluation) == names
    assert split_cases(list(reversed(names)), 0.2, seed=0) == (train, evaluation)  # order of listing is irrelevant
    assert any(split_cases(names, 0.2, seed=s)[1] != evaluation for s in range(1, 5))
    assert len(split_cases(names, 0.01, seed=0)[1]) == 1  # at least one evaluation case
    assert len(split_cases(["a", "b"], 0.9, seed=0)[0]) == 1  # at least one training case
    with pytest.raises(ValueError, match="at least 2 cases"):
        split_cases(["a"], 0.2, seed=0)


def nifti_config(data: Path, run_dir: Path, *extra: str) -> SegmentationConfig:
    return load_config(SegmentationConfig, ROOT / "configs/segmentation/nifti_folder.yaml",
                       [f"data.root={data}", f"train.output_dir={run_dir}", *extra])


def test_explicit_eval_cases_win_over_val_fraction(tmp_path: Path) -> None:
    write_nifti_folder(tmp_path / "scans", CASES)
    task = SegmentationTask(nifti_config(tmp_path / "scans", tmp_path / "run", "data.eval_cases=[scan_003]"))
    task.write_split(tmp_path / "run" / "split.json")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["source"] == "eval_cases" and split["eval"] == ["scan_003"] and len(split["train"]) == 4


def test_val_fraction_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "scans"
    write_nifti_folder(data, CASES[:1])
    # One case cannot be split: exit 1, one line naming data.root and val_fraction.
    assert run("segment", "train", "--config", "nifti_folder", f"data.root={data}",
               f"train.output_dir={tmp_path / 'run'}", *TINY) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "data.val_fraction=0.2" in lines[0] and str(data) in lines[0], lines
    assert not (tmp_path / "run").exists()  # refused before the run folder is made: a rerun needs no --overwrite
    # A fraction of 1 would leave nothing to train on: a config error, exit 2.
    assert run("segment", "train", "--config", "nifti_folder", f"data.root={data}",
               f"train.output_dir={tmp_path / 'run2'}", "data.val_fraction=1.0") == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "val_fraction=1.0 must lie in [0, 1)" in lines[0], lines
    # val_fraction is NIfTI's: a Synapse config with it is refused.
    assert run("segment", "train", "--config", "mri_lobes_cpu", "data.val_fraction=0.2",
               f"train.output_dir={tmp_path / 'run3'}") == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "val_fraction only apply to format='nifti'" in lines[0], lines
