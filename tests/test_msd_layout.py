"""The Medical Segmentation Decathlon / nnU-Net folder layout, as a user brings it.

A tiny generated folder (4 cases of 24 x 24 x 8 voxels, 2 channels ``<case>_0000`` / ``_0001``,
``labelsTr/<case>.nii.gz``, ``imagesTs/``, ``dataset.json``) goes through the CLI with the shipped
``msd_folder`` recipe: train (the split drawn by the tool, class names and channels from
dataset.json), evaluate (saving ``predictions/<case>.nii.gz``), then ``predict`` on ``imagesTs/``
writing ``<case>.nii.gz`` on each input's grid.
dataset.json is parsed in both of its forms, and bad files give one line naming the file and field.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from accelerate.state import AcceleratorState

from vit_segmentation.config import SegmentationConfig
from vit_segmentation.data import find_nifti_cases, read_dataset_json
from vit_training.cli import discover_tasks, run_task
from vit_training.config import load_config

TASKS = discover_tasks()
TINY = ["train.epochs=1", "train.batch_size=4", "train.mixed_precision=no", "model.backbone.depth=1",
        "data.input_size=[32,32]", "model.backbone.embed_dim=48", "model.backbone.num_heads=2"]
MSD_JSON = {
    "name": "Tiny", "description": "generated", "tensorImageSize": "4D",
    "modality": {"0": "T1", "1": "FLAIR"},
    "labels": {"0": "background", "1": "edema", "2": "tumour"},
    "numTraining": 4, "numTest": 1,
    "training": [{"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
                 for i in range(4)],
    "test": ["./imagesTs/case_100.nii.gz"],
}
NNUNET_JSON = {
    "channel_names": {"0": "T1", "1": "FLAIR"},
    "labels": {"background": 0, "edema": 1, "tumour": 2},
    "numTraining": 4, "file_ending": ".nii.gz",
}
# An LPS affine with 3 mm slices: written predictions must come back on it.
AFFINE = np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 30], [0, 0, 3.0, -10], [0, 0, 0, 1]])


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(*argv: str) -> int:
    AcceleratorState._reset_state(reset_partial_state=True)
    return run_task(TASKS["segment"], list(argv), prog="segment.py")


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip() and not line[:2].isdigit()]  # minus log lines


def write_case(folder: Path, case: str, rng: np.random.Generator, labels_folder: Path | None) -> None:
    labels = np.zeros((24, 24, 8), np.uint8)
    x, y = rng.integers(2, 10, size=2)
    labels[x:x + 10, y:y + 10, 1:7] = 1
    labels[x + 3:x + 7, y + 3:y + 7, 2:6] = 2
    t1 = 300 + 200 * labels.astype(np.float32) + rng.normal(0, 20, labels.shape)
    flair = 100 + 400 * (labels > 0) + rng.normal(0, 20, labels.shape)
    folder.mkdir(parents=True, exist_ok=True)
    for channel, data in enumerate((t1, flair)):
        nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), folder / f"{case}_{channel:04d}.nii.gz")
    if labels_folder is not None:
        labels_folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(labels, AFFINE), labels_folder / f"{case}.nii.gz")


def write_msd_folder(root: Path, document: dict) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        write_case(root / "imagesTr", f"case_{i:03d}", rng, root / "labelsTr")
    write_case(root / "imagesTs", "case_100", rng, None)
    (root / "dataset.json").write_text(json.dumps(document))


@pytest.mark.parametrize("document", [MSD_JSON, NNUNET_JSON], ids=["msd", "nnunet_v2"])
def test_dataset_json_is_read_in_both_forms(tmp_path: Path, document: dict) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps(document))
    info = read_dataset_json(tmp_path / "dataset.json")
    assert info.class_names == ["background", "edema", "tumour"] and info.num_classes == 3
    assert info.channels == ["T1", "FLAIR"] and info.file_ending == ".nii.gz" and info.num_training == 4


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"modality": {"0": "CT"}}, '"labels" must be an object'),
        ({"labels": {"0": "background", "2": "tumour"}, "modality": {"0": "CT"}}, '"labels" values must be 0..C-1'),
        ({"labels": {"background": 0, "tumour": [1, 2]}, "channel_names": {"0": "CT"}}, '"labels" entry'),
        ({"labels": {"background": 0, "tumour": 1}}, 'missing "channel_names"'),
        ({"labels": {"background": 0, "tumour": 1}, "channel_names": {"a": "CT"}}, '"channel_names" keys'),
        ({"labels": {"background": 0, "tumour": 1}, "channel_names": {"0": "CT"}, "file_ending": ".mha"},
         '"file_ending"'),
    ],
)
def test_bad_dataset_json_is_one_line_naming_the_file_and_field(tmp_path: Path, document: dict, field: str) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=field) as error:
        read_dataset_json(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_dataset_json(path)


def test_cases_pair_channel_files_and_name_a_missing_one(tmp_path: Path) -> None:
    write_msd_folder(tmp_path, MSD_JSON)
    cases = find_nifti_cases(tmp_path, channels=2)
    assert [case for case, _, _ in cases] == [f"case_{i:03d}" for i in range(4)]
    _, images, label = cases[0]
    assert [p.name for p in images] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    assert label is not None and label.name == "case_000.nii.gz"
    (tmp_path / "imagesTr" / "case_002_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case 'case_002': channel file .*case_002_0001.nii.gz not found") as error:
        find_nifti_cases(tmp_path, channels=2)
    assert "\n" not in str(error.value)
    # Read with one channel, the second channel's files are extra.
    with pytest.raises(ValueError, match="extra input channel"):
        find_nifti_cases(tmp_path, channels=1)


def test_msd_folder_trains_through_the_cli_and_predicts_imagesTs(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                  ) -> None:
    data, run_dir = tmp_path / "Task99_Tiny", tmp_path / "run"
    write_msd_folder(data, NNUNET_JSON)
    assert run("train", "--config", "msd_folder", f"data.root={data}", f"train.output_dir={run_dir}",
               "model.num_classes=null", "data.val_fraction=0.25", *TINY) == 0
    saved = load_config(SegmentationConfig, run_dir / "config.yaml")
    assert saved.model.num_classes == 3 and saved.data.class_names == ["edema", "tumour"]
    assert saved.data.channels == ["T1", "FLAIR"] and saved.model.backbone.in_chans == 2
    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"] == "val_fraction" and len(split["eval"]) == 1 and len(split["train"]) == 3
    assert [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if row.get("split") == "eval"]
    capsys.readouterr()

    # evaluate can write each held-out case as nnU-Net does, on the case's own (LPS, 3 mm) grid.
    assert run("evaluate", "--weights", str(run_dir), "eval.save_predictions=true") == 0
    (case,) = split["eval"]
    evaluated = nib.load(run_dir / "eval" / "predictions" / f"{case}.nii.gz")
    assert evaluated.shape == (24, 24, 8)
    np.testing.assert_allclose(evaluated.affine, AFFINE)

    out = tmp_path / "predictions"
    assert run("predict", "--weights", str(run_dir), str(data / "imagesTs"), "--output", str(out), "--cpu") == 0
    written = nib.load(out / "case_100.nii.gz")  # nnU-Net's naming
    source = nib.load(data / "imagesTs" / "case_100_0000.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2}
    assert "case_100.nii.gz" in capsys.readouterr().out

    # One channel file of a case named on its own: its sibling is found; a missing sibling is one line.
    assert run("predict", "--weights", str(run_dir), str(data / "imagesTr" / "case_000_0000.nii.gz"),
               "--output", str(out), "--cpu") == 0
    assert (out / "case_000.nii.gz").is_file()
    capsys.readouterr()
    (data / "imagesTs" / "case_100_0001.nii.gz").unlink()
    assert run("predict", "--weights", str(run_dir), str(data / "imagesTs" / "case_100_0000.nii.gz"),
               "--output", str(out), "--cpu") == 1
    lines = error_lines(capsys)
    assert len(lines) == 2 and "case 'case_100': channel file" in lines[0] and "case_100_0001" in lines[0], lines

    # The Python API reads a case the same way (the sibling channel found) and gives the same labels.
    from vit_segmentation import Segmenter

    result = Segmenter.from_pretrained(run_dir, device="cpu").predict(data / "imagesTr" / "case_000_0000.nii.gz")
    np.testing.assert_array_equal(result.labels, np.asanyarray(nib.load(out / "case_000.nii.gz").dataobj))


def test_num_classes_that_contradicts_dataset_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "Task99_Tiny"
    write_msd_folder(data, MSD_JSON)
    assert run("train", "--config", "msd_folder", f"data.root={data}", f"train.output_dir={tmp_path / 'run'}",
               "model.num_classes=5", *TINY) != 0
    lines = error_lines(capsys)
    assert len(lines) == 1 and "model.num_classes=5, but" in lines[0] and "dataset.json names 3 labels" in lines[0], lines
