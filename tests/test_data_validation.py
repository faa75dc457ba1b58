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


# ------------------------------------------------------------------------------------------ detection
def write_coco(root: Path, objects: int = 2) -> None:
    """Four 48 x 48 training and two validation images, `objects` boxes each, one category."""
    (root / "annotations").mkdir(parents=True)
    for split, count in (("train", 4), ("val", 2)):
        (root / split).mkdir()
        images, annotations = [], []
        for image_id in range(1, count + 1):
            Image.new("RGB", (48, 48), (20, 20, 20)).save(root / split / f"{image_id}.png")
            images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 48, "height": 48})
            for k in range(objects):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [2 + 4 * k, 2 + 4 * k, 10, 10], "area": 100, "iscrowd": 0})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_detect_corrupt_training_image_stops_and_skip_lists_it(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    write_coco(root)
    bad = root / "train" / "3.png"
    bad.write_bytes(b"\x89PNG truncated")
    out = tmp_path / "run"
    assert run("detect", *DETECT, f"data.root={root}", f"train.output_dir={out}") == 1
    assert str(bad) in error_line(capsys) and no_checkpoint(out)
    out = tmp_path / "skip"
    assert run("detect", *DETECT, f"data.root={root}", f"train.output_dir={out}", "data.on_bad_sample=skip") == 0
    assert (out / SKIPPED_SAMPLES_FILE).read_text().startswith(f"{bad}\t")


def test_detect_missing_image_with_a_worker_is_one_line(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_coco(root)
    (root / "train" / "2.png").unlink()
    assert run("detect", *DETECT, f"data.root={root}", f"train.output_dir={out}", "train.num_workers=1") == 1
    line = error_line(capsys)
    assert str(root / "train" / "2.png") in line and "not found" in line and "DataLoader" not in line


def test_detect_image_size_differing_from_the_json_is_named(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_coco(root)
    Image.new("RGB", (40, 48)).save(root / "train" / "1.png")
    assert run("detect", *DETECT, f"data.root={root}", f"train.output_dir={out}") == 1
    line = error_line(capsys)
    assert str(root / "train" / "1.png") in line and "48x40" in line and "48x48" in line


@pytest.mark.parametrize("problem", ["box outside", "unknown category"])
def test_detect_bad_evaluation_annotation_stops_before_training(problem: str, tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_coco(root)

    def change(data: dict) -> None:
        if problem == "box outside":
            data["annotations"][1]["bbox"] = [40, 40, 20, 20]
        else:
            data["annotations"][1]["category_id"] = 9

    edit_json(root / "annotations" / "instances_val.json", change)
    assert run("detect", *DETECT, f"data.root={root}", f"train.output_dir={out}", "data.on_bad_sample=skip") == 1
    line = error_line(capsys)
    expected = "lies outside the 48x48" if problem == "box outside" else "category_id=9 is not a category id"
    assert expected in line and "instances_val.json" in line, line
    assert no_checkpoint(out)


def test_detect_warns_when_num_queries_is_below_the_most_objects(tmp_path: Path, caplog) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_coco(root, objects=5)
    with caplog.at_level(logging.WARNING):
        assert run("detect", *DETECT, f"data.root={root}", f"train.output_dir={out}", "model.num_queries=3",
                   "train.max_steps=1") == 0
    assert any("5 objects but model.num_queries=3" in r.getMessage() for r in caplog.records), caplog.text


# ------------------------------------------------------------------------------------------ segmentation
def write_synapse(root: Path, train_slices: int = 4, test_cases: int = 2) -> None:
    """Synapse layout: 32 x 32 npz training slices, 4 x 32 x 32 h5 test volumes, labels 0..2."""
    rng = np.random.default_rng(0)
    for folder in ("train_npz", "test_vol_h5", "lists"):
        (root / folder).mkdir(parents=True)
    names = [f"case0001_slice{i:03d}" for i in range(train_slices)]
    for name in names:
        labels = rng.integers(0, 3, (32, 32)).astype(np.float32)
        np.savez(root / "train_npz" / f"{name}.npz", image=rng.random((32, 32), dtype=np.float32), label=labels)
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    cases = [f"case{i + 11:04d}" for i in range(test_cases)]
    for case in cases:
        write_volume(root / "test_vol_h5" / f"{case}.npy.h5", rng.integers(0, 3, (4, 32, 32)))
    (root / "lists" / "test_vol.txt").write_text("\n".join(cases) + "\n")


def write_volume(path: Path, labels: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        handle["image"] = np.random.default_rng(1).random(labels.shape, dtype=np.float32)
        handle["label"] = labels.astype(np.float32)


SEGMENT_SMALL = [*SEGMENT, "data.input_size=[32,32]", "model.num_classes=3", "data.class_names=[a,b]"]


def test_segment_corrupt_training_slice_stops_and_skip_lists_it(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    write_synapse(root)
    bad = root / "train_npz" / "case0001_slice002.npz"
    bad.write_bytes(b"PK garbage")
    out = tmp_path / "run"
    assert run("segment", *SEGMENT_SMALL, f"data.root={root}", f"train.output_dir={out}") == 1
    assert str(bad) in error_line(capsys) and no_checkpoint(out)
    out = tmp_path / "skip"
    assert run("segment", *SEGMENT_SMALL, f"data.root={root}", f"train.output_dir={out}",
               "data.on_bad_sample=skip", "train.max_steps=1") == 0
    assert (out / SKIPPED_SAMPLES_FILE).read_text().startswith(f"{bad}\t")


def test_segment_evaluation_label_out_of_range_stops_before_training(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "data", tmp_path / "run"
    write_synapse(root)
    bad = root / "test_vol_h5" / "case0012.npy.h5"
    labels = np.zeros((4, 32, 32))
    labels[2, 5, 5] = 7
    write_volume(bad, labels)
    assert run("segment", *SEGMENT_SMALL, f"data.root={root}", f"train.output_dir={out}", "data.on_bad_sample=skip") == 1
    line = error_line(capsys)
    assert str(bad) in line and "7" in line, line
    assert no_checkpoint(out)


def write_nifti(root: Path, cases: int = 3) -> None:
    """An nnU-Net style folder: imagesTr/<case>_0000.nii.gz and labelsTr/<case>.nii.gz, 32 x 32 x 4."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for index in range(cases):
        case = f"case{index:02d}"
        image = rng.normal(0, 100, (32, 32, 4)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{case}_0000.nii.gz")
        labels = rng.integers(0, 3, (32, 32, 4)).astype(np.uint8)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")


def test_segment_nifti_label_grid_mismatch_is_named_and_skippable(tmp_path: Path, capsys) -> None:
    import nibabel as nib

    root = tmp_path / "data"
    write_nifti(root)
    bad = root / "labelsTr" / "case01.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 30, 4), np.uint8), np.eye(4)), bad)
    nifti = [*SEGMENT_SMALL, "data.format=nifti", "data.eval_cases=[case02]", "model.backbone.in_chans=1"]
    out = tmp_path / "run"
    assert run("segment", *nifti, f"data.root={root}", f"train.output_dir={out}") == 1
    line = error_line(capsys)
    assert str(bad) in line and "(32, 30, 4)" in line, line
    out = tmp_path / "skip"
    assert run("segment", *nifti, f"data.root={root}", f"train.output_dir={out}", "data.on_bad_sample=skip",
               "train.max_steps=1") == 0
    assert "case01_0000.nii.gz\t" in (out / SKIPPED_SAMPLES_FILE).read_text()


def test_a_file_gone_during_training_is_replaced_under_skip(tmp_path: Path) -> None:
    from vit_classification.data import AugmentedSamples, ImageFolderDataset
    from vit_classification.transforms import build_eval_transform

    root = tmp_path / "data"
    write_imagefolder(root)
    source = ImageFolderDataset(root / "train", channels=1)
    transform = build_eval_transform(16, 1, [0.5], [0.5], crop_pct=1.0)
    (root / "train" / "a" / "a0.png").unlink()  # after the check: a race with another process
    with pytest.raises(FileNotFoundError, match="a0.png"):
        AugmentedSamples(source, transform)[0]
    tensor, label, index = AugmentedSamples(source, transform, skip_unreadable=True)[0]
    assert tensor.shape == (1, 16, 16) and (label, index) == (0, 1)
