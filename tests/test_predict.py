"""``predict`` of every task, through the CLI runner: many inputs with a bad one among them, the
evaluation's precision (predictions reproduce ``evaluate``'s numbers) and NIfTI headers kept.

Run folders are written directly (config.yaml + randomly initialised model.safetensors): the
checks are about reading, precision and writing, not about what a model learned.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import save_file

from vit_training.cli import TaskCommands, discover_tasks, run_task
from vit_training.config import load_config, save_config
from vit_training.loop import build_accelerator, load_weights_for_inference

TASKS = discover_tasks()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state; each in-process command builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(spec: TaskCommands, *argv: str) -> int:
    return run_task(spec, list(argv), prog=f"{spec.name}.py")


def make_run(spec: TaskCommands, folder: Path, overrides: list[str]) -> Path:
    """A run folder as `fit` leaves it: config.yaml and model.safetensors (seeded random weights).

    Every weight gets noise on top of its initialisation, so outputs vary across pixels and have
    near ties: fp32 and bf16 then give different labels for some inputs, which a fresh
    initialisation (nearly constant outputs) would not show.
    """
    config = load_config(spec.config_schema, None, [*overrides, f"train.output_dir={folder}"])
    task = spec.build_task(config)
    torch.manual_seed(0)
    model = spec.inference_model(task) if spec.inference_model is not None else task.build_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(task.config, folder / "config.yaml")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def stderr_lines(capsys: pytest.CaptureFixture) -> tuple[str, list[str]]:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line[:2].isdigit()]  # minus logs
    assert "Traceback" not in captured.err
    return captured.out, lines


def write_truncated_jpeg(path: Path) -> None:
    Image.fromarray(np.full((28, 28, 3), 90, dtype=np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:200])


# ---------------------------------------------------------------------------------------- classification
CLASSIFY = ["model.backbone.preset=vit_micro_patch4_28", "model.backbone.embed_dim=32", "model.backbone.depth=1",
            "model.backbone.num_heads=2", "model.num_classes=3", "data.class_names=[ant,bee,cat]",
            "data.channels=1", "data.input_size=28",
            "data.mean=[0.5]", "data.std=[0.25]", "train.batch_size=3", "train.mixed_precision=bf16"]


def write_imagefolder(root: Path, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(
                root / name / f"{index}.png")


def test_classify_predict_reports_each_bad_input_and_predicts_the_others(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    spec = TASKS["classify"]
    run_dir = make_run(spec, tmp_path / "run", CLASSIFY)
    images = tmp_path / "images"
    write_imagefolder(images, per_class=2)
    write_truncated_jpeg(images / "bee" / "broken.jpg")
    (images / "cat" / "notes.png").write_text("not an image")
    out = tmp_path / "predictions.csv"
    # batch size 3: each bad file sits in a batch with good ones
    status = run(spec, "predict", "--weights", str(run_dir), str(images), str(tmp_path / "missing.png"),
                 "--output", str(out), "--batch-size", "3", "--cpu")
    stdout, lines = stderr_lines(capsys)
    assert status == 1
    assert len(lines) == 4, lines
    assert sorted(line.split(": ")[0] for line in lines[:3]) == sorted(
        str(path) for path in (images / "bee" / "broken.jpg", images / "cat" / "notes.png", tmp_path / "missing.png"))
    assert lines[3] == "3 of 9 inputs failed"
    with out.open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 6 and all("broken" not in row["sample"] and "notes" not in row["sample"] for row in rows)
    assert all(Path(row["sample"]).name in stdout for row in rows)
    # all good: exit 0, no summary
    assert run(spec, "predict", "--weights", str(run_dir), str(images / "ant"), "--cpu") == 0
    _, lines = stderr_lines(capsys)
    assert lines == []


def test_classify_predict_equals_evaluate_predictions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = TASKS["classify"]
    images = tmp_path / "val"
    write_imagefolder(images, per_class=4)
    run_dir = make_run(spec, tmp_path / "run", [*CLASSIFY, "data.format=imagefolder", f"data.val_dir={images}",
                                                f"data.train_dir={images}"])
    assert run(spec, "evaluate", "--weights", str(run_dir), "--output", str(tmp_path / "eval")) == 0
    assert run(spec, "predict", "--weights", str(run_dir), str(images), "--output", str(tmp_path / "p.csv")) == 0
    capsys.readouterr()

    def by_sample(path: Path) -> dict[str, dict[str, str]]:
        with path.open() as stream:
            return {str(Path(row["sample"]).resolve()): row for row in csv.DictReader(stream)}

    evaluated, predicted = by_sample(tmp_path / "eval" / "predictions.csv"), by_sample(tmp_path / "p.csv")
    assert evaluated.keys() == predicted.keys() and len(predicted) == 12
    for sample, row in predicted.items():
        assert row["predicted_index"] == evaluated[sample]["predicted_index"], sample
        assert float(row["score"]) == pytest.approx(float(evaluated[sample]["score"]), abs=1e-6), sample


# ---------------------------------------------------------------------------------------- detection
DETECT = ["model.backbone.preset=vit_micro_patch4_28", "model.backbone.embed_dim=32", "model.backbone.depth=1",
          "model.backbone.num_heads=2", "model.enc_layers=1", "model.dec_layers=1", "model.num_queries=5",
          "data.class_names=[box]", "data.category_ids=[1]", "data.eval_size=32", "data.max_size=32", "data.train_sizes=[32]",
          "train.mixed_precision=no"]


def test_detect_predict_reports_each_bad_input_and_predicts_the_others(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    spec = TASKS["detect"]
    run_dir = make_run(spec, tmp_path / "run", DETECT)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((30, 40, 3), 120, dtype=np.uint8)).save(tmp_path / name)
    write_truncated_jpeg(tmp_path / "c.jpg")
    out = tmp_path / "detections"
    status = run(spec, "predict", "--weights", str(run_dir), str(tmp_path / "a.png"), str(tmp_path / "c.jpg"),
                 str(tmp_path / "b.png"), "--output", str(out), "--cpu")
    _, lines = stderr_lines(capsys)
    assert status == 1
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / 'c.jpg'}: ") and lines[1] == "1 of 3 inputs failed"
    rows = json.loads((out / "detections.json").read_text())
    assert [Path(row["file"]).name for row in rows] == ["a.png", "b.png"]


# ---------------------------------------------------------------------------------------- segmentation
SEGMENT = [
    "model.backbone.preset=vit_base_r50_s16", "model.backbone.hybrid_layers=[1,1]", "model.backbone.embed_dim=32",
    "model.backbone.depth=1", "model.backbone.num_heads=2", "model.n_skip=2", "model.decoder_channels=[16,8,8]",
    "model.head_channels=16", "model.num_classes=3", "data.input_size=[32,32]", "data.interpolation=bilinear",
    "data.class_names=[left,right]", "eval.slice_batch_size=3", "eval.overlay_slices=2", "train.batch_size=2",
]
MNI = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def write_scan(path: Path, rng: np.random.Generator, codes: tuple[int, int] = (1, 1),
               shape: tuple[int, int, int] = (32, 36, 5)) -> np.ndarray:
    """A CT-like volume (X, Y, Z) in HU with the given (qform, sform) codes; returns labels for it."""
    image = rng.normal(0, 1, shape).cumsum(axis=0).cumsum(axis=1)
    image = (image - image.min()) / (image.max() - image.min()) * 400 - 125
    labels = np.digitize(image, [20, 150]).astype(np.uint8)
    nii = nib.Nifti1Image(image.astype(np.float32), MNI)
    nii.set_qform(MNI, code=codes[0])
    nii.set_sform(MNI, code=codes[1])
    nii.header["descrip"] = b"a scan in MNI space"
    nii.header.set_intent("none")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nii, path)
    return labels


def test_segment_predict_equals_evaluate_and_keeps_the_nifti_header(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from vit_segmentation.metrics import case_metrics, summarize

    spec = TASKS["segment"]
    rng = np.random.default_rng(1)
    for case in ("a", "b"):
        labels = write_scan(tmp_path / "data" / "imagesTr" / f"{case}.nii.gz", rng, codes=(4, 4))
        (tmp_path / "data" / "labelsTr").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(labels, MNI), tmp_path / "data" / "labelsTr" / f"{case}.nii.gz")
    run_dir = make_run(spec, tmp_path / "run", [*SEGMENT, f"data.root={tmp_path / 'data'}", "data.format=nifti",
                                                "data.eval_cases=[b]", "train.mixed_precision=bf16"])
    assert run(spec, "evaluate", "--weights", str(run_dir), "--output", str(tmp_path / "eval")) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    scan = tmp_path / "data" / "imagesTr" / "b.nii.gz"
    assert run(spec, "predict", "--weights", str(run_dir), str(scan), "--output", str(tmp_path / "out")) == 0
    capsys.readouterr()

    written = nib.load(tmp_path / "out" / "b.nii.gz")
    source = nib.load(scan)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (4, 4)
    np.testing.assert_allclose(written.header.get_qform(), source.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(written.header.get_sform(), source.header.get_sform(), atol=1e-5)
    assert written.header["descrip"] == source.header["descrip"]
    assert written.header["intent_code"] == source.header["intent_code"]
    assert written.get_data_dtype() == np.uint8
    # Dice of the written prediction reproduces the evaluated numbers.
    prediction = np.moveaxis(np.asanyarray(written.dataobj), 2, 0)
    truth = np.moveaxis(np.asanyarray(nib.load(tmp_path / "data" / "labelsTr" / "b.nii.gz").dataobj), 2, 0)
    dice, hd95 = case_metrics(prediction, truth.astype(np.int64), 3, mode="transunet",
                              spacing=(2.0, 2.0, 2.0))
    for key, value in summarize(dice[None], hd95[None], ["left", "right"], "transunet").items():
        assert math.isclose(metrics[key], value, abs_tol=1e-12) or (math.isnan(value) and math.isnan(metrics[key])), key
    # Voxel for voxel the labels of the evaluation path: the evaluation case under the autocast of
    # the Accelerator that `evaluate` builds for this config.
    task = spec.build_task(load_config(spec.config_schema, run_dir / "config.yaml"))
    model = load_weights_for_inference(spec.inference_model(task), run_dir / "model.safetensors").eval()
    with torch.no_grad(), build_accelerator(task.config.train).autocast():
        volume = task.build_eval_dataset()[0]
        evaluated = task.predict_volume(model, volume)
    # Evaluation works on the grid reoriented to data.orientation (RAS); the file is in the scan's own (LAS) order.
    np.testing.assert_array_equal(prediction, np.moveaxis(volume.to_source(evaluated), 2, 0))


def test_segment_predict_keeps_codes_1_0_and_reports_bad_inputs(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    spec = TASKS["segment"]
    run_dir = make_run(spec, tmp_path / "run", [*SEGMENT, f"data.root={tmp_path}", "train.mixed_precision=no"])
    rng = np.random.default_rng(2)
    write_scan(tmp_path / "good.nii.gz", rng, codes=(1, 0))
    (tmp_path / "broken.nii.gz").write_bytes((tmp_path / "good.nii.gz").read_bytes()[:300])
    (tmp_path / "notes.txt").write_text("no image")
    out = tmp_path / "out"
    status = run(spec, "predict", "--weights", str(run_dir), str(tmp_path / "broken.nii.gz"),
                 str(tmp_path / "good.nii.gz"), str(tmp_path / "notes.txt"), str(tmp_path / "gone.nii.gz"),
                 "--output", str(out), "--cpu")
    stdout, lines = stderr_lines(capsys)
    assert status == 1
    assert [line.split(": ")[0] for line in lines[:-1]] == [
        str(tmp_path / name) for name in ("broken.nii.gz", "notes.txt", "gone.nii.gz")]
    assert lines[-1] == "3 of 4 inputs failed"
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "good_overlay.png"]
    header = nib.load(out / "good.nii.gz").header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 0)
    np.testing.assert_allclose(header.get_qform(), MNI, atol=1e-5)
    assert f"{tmp_path / 'good.nii.gz'} -> " in stdout
