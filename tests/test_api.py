"""The Python API (`Classifier`, `Detector`, `Segmenter`) on tiny models trained for one epoch by the CLI.

For each task: loading the run folder and a `save_pretrained` folder gives identical predictions,
the API predicts what ``vitasks <task> predict`` writes, a file path, a PIL image, a numpy array
and a tensor of the same image agree, and the saved folder carries a model card and
preprocessing.json naming the classes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from vit_classification import Classification, Classifier
from vit_detection import Detections, Detector
from vit_segmentation import Segmentation, Segmenter
from vit_training.api import as_uint8_image
from vit_training.cli import discover_tasks, run_task

TASKS = discover_tasks()
TINY = ["train.epochs=1", "train.batch_size=4", "train.mixed_precision=no", "model.backbone.depth=1"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def reset_accelerator() -> None:
    # Accelerate keeps one process-wide state; each in-process command builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    reset_accelerator()
    yield
    reset_accelerator()


def run(task: str, *argv: str) -> int:
    reset_accelerator()
    return run_task(TASKS[task], list(argv), prog=f"{task}.py")


def assert_saved_folder(folder: Path, classes: list[str]) -> None:
    """A `save_pretrained` folder: weights, both configs, preprocessing.json and a card naming the classes."""
    for name in ("model.safetensors", "config.yaml", "config.json", "preprocessing.json", "README.md"):
        assert (folder / name).is_file(), name
    preprocessing = json.loads((folder / "preprocessing.json").read_text())
    assert [name for name in preprocessing["class_names"] if name != "background"] == classes
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vitasks\n")
    assert all(f"`{name}`" in card for name in classes)
    assert "## Evaluation" in card and "| step |" in card  # the run's last evaluation
    assert json.loads((folder / "eval_metrics.json").read_text())["step"] >= 1


# ------------------------------------------------------------------------------------------ classification
@pytest.fixture(scope="module")
def classify_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classify")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for name, colour in COLOURS.items():
            (root / "photos" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "photos" / split / name / f"{i}.png")
    assert run("classify", "train", "--config", "imagefolder", f"data.root={root / 'photos'}",
               f"train.output_dir={root / 'run'}", "data.input_size=16", *TINY) == 0
    return root


def test_classifier_matches_predict_and_round_trips(classify_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    val = classify_run / "photos" / "val"
    model = Classifier.from_pretrained(classify_run / "run", device="cpu")
    assert model.class_names == ["blue", "green", "red"] and model.precision == "no"
    results = model.predict(val)
    assert len(results) == 6 and all(isinstance(result, Classification) for result in results)

    out = tmp_path / "predictions.csv"
    assert run("classify", "predict", "--weights", str(classify_run / "run"), str(val), "--output", str(out),
               "--cpu") == 0
    capsys.readouterr()
    with out.open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["sample"] for row in rows] == [result.source for result in results]
    for row, result in zip(rows, results, strict=True):
        assert (int(row["predicted_index"]), row["predicted_name"]) == (result.index, result.name)
        assert float(row["score"]) == pytest.approx(result.score, abs=1e-6)

    model.save_pretrained(tmp_path / "saved")
    assert_saved_folder(tmp_path / "saved", ["blue", "green", "red"])
    assert Classifier.from_pretrained(tmp_path / "saved", device="cpu").predict(val) == results
    # The weights file itself also names its folder.
    assert Classifier.from_pretrained(tmp_path / "saved" / "model.safetensors", device="cpu").predict(val) == results

    # One image as a path, a PIL image, a numpy array (H, W, C) and a tensor (C, H, W), uint8 and float.
    path = val / "red" / "0.png"
    pixels = np.asarray(Image.open(path))
    inputs = [path, str(path), Image.open(path), pixels, torch.from_numpy(pixels.copy()).permute(2, 0, 1),
              pixels / 255.0]
    predicted = model.predict(inputs, top_k=2)
    assert [(p.index, p.score, p.top_k) for p in predicted] == [(predicted[0].index, predicted[0].score,
                                                                 predicted[0].top_k)] * len(inputs)
    assert len(predicted[0].top_k) == 2 and predicted[0].source == str(path) and predicted[2].source is None
    single = model.predict(path)
    assert isinstance(single, Classification) and single.index == predicted[0].index


def test_local_paths_never_reach_the_hub(tmp_path: Path) -> None:
    for missing in (tmp_path / "nothing", "./nothing", "runs/nothing/here"):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            Classifier.from_pretrained(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.yaml or config.json"):
        Classifier.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        as_uint8_image(np.zeros((2, 3, 4, 5), np.uint8))


# ------------------------------------------------------------------------------------------ detection
def write_coco_split(root: Path, split: str, count: int, seed: int) -> None:
    """root/<split>/<i>.png (48 x 48) and root/annotations/instances_<split>.json, categories 4 and 9."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / split).mkdir(parents=True)
    for i in range(count):
        pixels = np.full((48, 48, 3), 90, np.uint8)
        category = int(rng.choice([4, 9]))
        w, h = (16, 16) if category == 4 else (24, 8)
        x, y = int(rng.integers(0, 48 - w)), int(rng.integers(0, 48 - h))
        pixels[y:y + h, x:x + w] = (230, 200, 20) if category == 4 else (20, 200, 230)
        annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": category,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels).save(root / split / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 48})
    (root / "annotations").mkdir(exist_ok=True)
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 9, "name": "bar"}, {"id": 4, "name": "square"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


def test_detector_matches_predict_and_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run_dir = tmp_path / "boxes", tmp_path / "run"
    write_coco_split(data, "train", 4, seed=0)
    write_coco_split(data, "val", 2, seed=1)
    assert run("detect", "train", "--config", "coco_folder", f"data.root={data}", f"train.output_dir={run_dir}",
               "data.train_sizes=[48]", "data.eval_size=48", "data.max_size=48", "model.backbone.img_size=48",
               *TINY) == 0
    images = [data / "val" / "0.png", data / "val" / "1.png"]
    model = Detector.from_pretrained(run_dir, device="cpu")
    results = model.predict(images)
    assert all(isinstance(result, Detections) for result in results)

    out = tmp_path / "detections"
    assert run("detect", "predict", "--weights", str(run_dir), *map(str, images), "--output", str(out), "--cpu") == 0
    capsys.readouterr()
    rows = json.loads((out / "detections.json").read_text())
    for row, result in zip(rows, results, strict=True):
        assert row["file"] == result.source and len(row["detections"]) == len(result) > 0
        assert [d["label"] for d in row["detections"]] == result.names
        assert [d["category_id"] for d in row["detections"]] == result.category_ids
        np.testing.assert_allclose([d["bbox_xyxy"] for d in row["detections"]], result.boxes, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose([d["score"] for d in row["detections"]], result.scores, rtol=1e-6)
    assert {model.class_names[label] for label in results[0].labels} <= {"square", "bar"}

    model.save_pretrained(tmp_path / "saved")
    assert_saved_folder(tmp_path / "saved", ["square", "bar"])
    preprocessing = json.loads((tmp_path / "saved" / "preprocessing.json").read_text())
    assert (preprocessing["eval_size"], preprocessing["max_size"], preprocessing["category_ids"]) == (48, 48, [4, 9])
    again = Detector.from_pretrained(tmp_path / "saved", device="cpu").predict(images)
    for first, second in zip(results, again, strict=True):
        np.testing.assert_array_equal(first.boxes, second.boxes)
        np.testing.assert_array_equal(first.scores, second.scores)

    pixels = np.asarray(Image.open(images[0]))
    for item in (Image.open(images[0]), pixels, torch.from_numpy(pixels.copy()).permute(2, 0, 1)):
        found = model.predict(item)
        np.testing.assert_array_equal(found.boxes, results[0].boxes)
        assert found.names == results[0].names and found.source is None
    kept = model.predict(images[0], score_threshold=float(results[0].scores[0]))
    assert len(kept) >= 1 and (kept.scores >= results[0].scores[0]).all()


# ------------------------------------------------------------------------------------------ segmentation
def write_nifti_folder(root: Path, cases: list[str]) -> None:
    """imagesTr/<case>_0000.nii.gz (MR-like) and labelsTr/<case>.nii.gz, 24 x 24 x 4, a bright square labelled 1."""
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


def test_segmenter_matches_predict_and_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run_dir = tmp_path / "scans", tmp_path / "run"
    write_nifti_folder(data, ["a", "b", "c"])
    assert run("segment", "train", "--config", "nifti_folder", f"data.root={data}", f"train.output_dir={run_dir}",
               "data.eval_cases=[c]", "data.input_size=[32,32]", *TINY) == 0
    scan = data / "imagesTr" / "c_0000.nii.gz"
    grey = (np.random.default_rng(3).random((20, 28)) * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "slice.png")

    model = Segmenter.from_pretrained(run_dir, device="cpu")
    volume, picture = model.predict([scan, tmp_path / "slice.png"])
    assert isinstance(volume, Segmentation) and volume.labels.shape == (24, 24, 4)
    np.testing.assert_allclose(volume.affine, nib.load(scan).affine)
    assert picture.labels.shape == (20, 28) and picture.affine is None

    out = tmp_path / "predicted"
    assert run("segment", "predict", "--weights", str(run_dir), str(scan), str(tmp_path / "slice.png"),
               "--output", str(out), "--cpu") == 0
    capsys.readouterr()
    np.testing.assert_array_equal(np.asarray(nib.load(out / "c.nii.gz").dataobj), volume.labels)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "slice_labels.png")), picture.labels)
    # save writes what predict writes.
    written = nib.load(volume.save(tmp_path / "mine.nii.gz"))
    np.testing.assert_array_equal(np.asarray(written.dataobj), volume.labels)
    np.testing.assert_allclose(written.affine, nib.load(out / "c.nii.gz").affine)

    model.save_pretrained(tmp_path / "saved")
    assert_saved_folder(tmp_path / "saved", list(model.class_names))
    preprocessing = json.loads((tmp_path / "saved" / "preprocessing.json").read_text())
    assert (preprocessing["modality"], preprocessing["axis"], preprocessing["input_size"]) == ("mr", 2, [32, 32])
    np.testing.assert_array_equal(Segmenter.from_pretrained(tmp_path / "saved", device="cpu").predict(scan).labels,
                                  volume.labels)

    # A 2D slice as a PIL image, a uint8 array, a tensor and floats in [0, 1]; a volume as an (S, H, W) array.
    for item in (Image.open(tmp_path / "slice.png"), grey, torch.from_numpy(grey), grey / 255.0):
        np.testing.assert_array_equal(model.predict(item).labels, picture.labels)
    # (S, H, W) as read, S = data.axis
    np.testing.assert_array_equal(model.predict(volume.volume.image).labels, np.moveaxis(volume.labels, 2, 0))
