"""The segmentation task end to end on a tiny synthetic Synapse data set written in tmp_path.

Train slices are 32 x 32 (class 1: a bright disc, class 2: a dimmer square); the test volumes
have 36 x 40 slices, so evaluation exercises the resize to the training size and back.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from PIL import Image
from torch.utils.data import DataLoader

from vit_segmentation.config import SegmentationConfig
from vit_segmentation.metrics import case_metrics, summarize
from vit_segmentation.task import SegmentationTask, predict_volume
from vit_training.cli import cpu_launch_command
from vit_training.config import ConfigError, load_config
from vit_training.loop import fit

ROOT = Path(__file__).resolve().parents[1]
SEGMENT = ROOT / "tasks" / "segment.py"
CONFIGS = sorted((ROOT / "configs" / "segmentation").glob("*.yaml"))
CLASS_NAMES = ["disc", "square"]
LAUNCH_TWO = cpu_launch_command(2)


# ---------------------------------------------------------------------------------------- data
def synthetic_slice(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A float32 (H, W) image in [0, 1] and its labels: background 0, disc 1, square 2 (may be absent)."""
    labels = np.zeros((height, width), dtype=np.float32)  # Synapse ships float labels
    rows, cols = np.mgrid[:height, :width]
    if rng.random() < 0.85:
        cy, cx, radius = rng.uniform(8, height - 8), rng.uniform(8, width - 8), rng.uniform(4, 7)
        labels[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = 1
    if rng.random() < 0.85:
        top, left = int(rng.integers(0, height - 9)), int(rng.integers(0, width - 9))
        side = int(rng.integers(5, 9))
        labels[top : top + side, left : left + side] = 2
    image = np.choose(labels.astype(int), [0.1, 0.85, 0.45]) + rng.normal(0, 0.03, (height, width))
    return np.clip(image, 0, 1).astype(np.float32), labels


def write_synapse(root: Path, train_slices: int = 16, test_cases: int = 3) -> Path:
    rng = np.random.default_rng(0)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists").mkdir()
    names = []
    for index in range(train_slices):
        name = f"case{index % 2 + 1:04d}_slice{index:03d}"
        image, labels = synthetic_slice(rng, 32, 32)
        np.savez(root / "train_npz" / f"{name}.npz", image=image, label=labels)
        names.append(name)
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    cases = []
    for index in range(test_cases):
        case = f"case{index + 11:04d}"
        pairs = [synthetic_slice(rng, 36, 40) for _ in range(4)]
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as handle:
            handle["image"] = np.stack([image for image, _ in pairs])
            handle["label"] = np.stack([labels for _, labels in pairs])
        cases.append(case)
    (root / "lists" / "test_vol.txt").write_text("\n".join(cases) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root


TINY = [
    "model.backbone.preset=vit_base_r50_s16", "model.backbone.hybrid_layers=[1,1]", "model.backbone.embed_dim=32",
    "model.backbone.depth=1", "model.backbone.num_heads=2", "model.n_skip=2", "model.decoder_channels=[16,8,8]",
    "model.head_channels=16", "model.num_classes=3", "data.input_size=[32,32]", "data.interpolation=bilinear",
    "augment.rot_flip_prob=0.5", "augment.rotate_prob=0.0",
    "optim.lr=3e-3", "optim.weight_decay=0.0", "schedule.name=constant",
    "train.batch_size=4", "train.mixed_precision=no", "train.log_every_steps=1", "train.eval_every_epochs=0",
    "eval.slice_batch_size=3", "eval.overlay_slices=2",
]


def tiny_config(root: Path, output_dir: Path, *overrides: str) -> SegmentationConfig:
    return load_config(SegmentationConfig, None,
                       [*TINY, f"data.root={root}", f"train.output_dir={output_dir}", *overrides])


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state; each in-process run here builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synapse(tmp_path_factory.mktemp("synapse"))


@pytest.fixture(scope="module")
def trained(synapse: Path, tmp_path_factory: pytest.TempPathFactory):
    """One short training run shared by the tests that need trained weights."""
    AcceleratorState._reset_state(reset_partial_state=True)
    output_dir = tmp_path_factory.mktemp("run")
    task = SegmentationTask(tiny_config(synapse, output_dir, "train.epochs=20"))
    result = fit(task, task.config)
    AcceleratorState._reset_state(reset_partial_state=True)
    return task, result


def load_cli():
    """tasks/segment.py as a module (tasks/ is not a package), to call its `main` in this process."""
    spec = importlib.util.spec_from_file_location("segment_cli", SEGMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    return subprocess.run([*(launcher or [sys.executable]), str(SEGMENT), *args], capture_output=True, text=True,
                          cwd=ROOT, env=environment, timeout=240)


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_files_load(path: Path) -> None:
    config = load_config(SegmentationConfig, path)
    assert config.model.num_classes >= 2 and config.train.output_dir.startswith("runs/")


def test_the_config_files_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"mri_lobes_cpu.yaml", "synapse_r50_vit_b16.yaml", "nifti_folder.yaml"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_skip=3", r"model.n_skip=3 must lie in \[0, 2\]"),
        ("data.input_size=[30,32]", r"data.input_size=\[30, 32\] is not divisible by the model's patch size 8"),
        ("data.class_names=[a,b,c]", "data.class_names has 3 names but model.num_classes=3 needs 2"),
        ("model.backbone.preset=vit_nope", "model.backbone.preset='vit_nope' is not a vit_backbone preset"),
        ("eval.metric_mode=monai", "eval.metric_mode: 'monai' is not one of transunet, standard"),
        ("data.eval_cases=[x]", "eval_cases only apply to format='nifti'"),
        ("loss.ce_weight=0", None),
        ("augment.rot_flip_prob=1.5", r"augment.rot_flip_prob=1.5 must lie in \[0, 1\]"),
        ("model.decoder_size=[8]", "unknown key 'model.decoder_size'.*did you mean 'decoder_channels'"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(tmp_path: Path, override: str, message: str | None) -> None:
    if message is None:  # a valid value: CE off, Dice only
        assert tiny_config(tmp_path, tmp_path, override).loss.ce_weight == 0
        return
    with pytest.raises(ConfigError, match=message) as error:
        tiny_config(tmp_path, tmp_path, override)
    assert "\n" not in str(error.value)


def test_class_names_come_from_classes_txt_or_default(synapse: Path, tmp_path: Path) -> None:
    assert SegmentationTask(tiny_config(synapse, tmp_path)).class_names == CLASS_NAMES
    assert SegmentationTask(tiny_config(tmp_path, tmp_path)).class_names == ["class_1", "class_2"]
    resolved = SegmentationTask(tiny_config(synapse, tmp_path)).config
    assert resolved.model.backbone.img_size == [32, 32]


# ---------------------------------------------------------------------------------------- training
def test_fit_lowers_the_loss_and_evaluates_volumes(trained) -> None:
    task, result = trained
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 80  # 16 slices / batch 4 x 20 epochs
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4])
    metrics = result.metrics
    assert metrics["mean_dice"] > 0.5
    for name in CLASS_NAMES:
        for key in (f"dice/{name}", f"hd95/{name}", f"standard/dice/{name}", f"standard/hd95/{name}"):
            assert key in metrics
    with open(result.output_dir / "per_case_transunet.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["case"] for row in rows] == ["case0011", "case0012", "case0013"]
    assert "transunet convention (3 cases, HD95 in voxels)" in (result.output_dir / "summary.txt").read_text()
    assert (result.output_dir / "overlays.png").stat().st_size > 0


def test_augmentation_is_seeded_by_epoch_and_index(synapse: Path, tmp_path: Path) -> None:
    dataset = SegmentationTask(tiny_config(synapse, tmp_path)).build_train_dataset()
    first = [dataset[i][1] for i in range(8)]
    again = [dataset[i][1] for i in reversed(range(8))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i][1]) for i, a in enumerate(first))
    image, labels = dataset[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and labels.dtype == torch.int64


def test_label_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    root = write_synapse(tmp_path / "data", train_slices=2, test_cases=1)
    image, labels = synthetic_slice(np.random.default_rng(1), 32, 32)
    labels[0, 0] = 5
    np.savez(root / "train_npz" / "case0001_slice000.npz", image=image, label=labels)
    task = SegmentationTask(tiny_config(root, tmp_path / "run"))
    message = r"case0001_slice000.npz: label values must be class indices in \[0, 3\), got 5"
    with pytest.raises(ValueError, match=message):
        task.build_train_dataset()[0]


def test_nifti_cases_train_and_evaluate_with_held_out_cases(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    for case in ("ct_a", "ct_b", "ct_c"):
        pairs = [synthetic_slice(rng, 32, 40) for _ in range(3)]
        image = np.stack([image for image, _ in pairs], axis=2) * 400 - 125  # HU in [-125, 275]
        labels = np.stack([labels for _, labels in pairs], axis=2).astype(np.uint8)
        affine = np.diag([0.7, 0.7, 3.0, 1.0])
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), tmp_path / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), tmp_path / "labelsTr" / f"{case}.nii.gz")
    config = tiny_config(tmp_path, tmp_path / "run", "data.format=nifti", "data.eval_cases=[ct_b]")
    task = SegmentationTask(config)
    train, evaluation = task.build_datasets()
    assert len(train) == 6 and len(evaluation) == 1  # 2 training cases x 3 axial slices
    image, labels = train[0]
    assert image.shape == (1, 32, 32) and 0 <= float(image.min()) and float(image.max()) <= 1.0 + 1e-5
    volume = evaluation[0]
    assert volume.case == "ct_b" and volume.image.shape == (3, 32, 40)
    np.testing.assert_allclose(volume.spacing, (3.0, 0.7, 0.7), rtol=1e-6)  # NIfTI stores float32 zooms
    loader = DataLoader(evaluation, batch_size=1, collate_fn=task.collate_fn(False))
    metrics = task.evaluate(task.build_model().eval(), loader, Accelerator(cpu=True), tmp_path / "eval")
    assert set(metrics) >= {"mean_dice", "dice/class_1", "standard/hd95/class_2"}
    with pytest.raises(ConfigError, match="data.eval_cases names cases not in"):
        SegmentationTask(tiny_config(tmp_path, tmp_path / "run", "data.format=nifti", "data.eval_cases=[x]")
                         ).build_datasets()


# ---------------------------------------------------------------------------------------- evaluation
def test_evaluate_equals_a_direct_computation(trained, tmp_path: Path) -> None:
    task, result = trained
    model = result.model.eval()
    volumes = [task.build_eval_dataset()[i] for i in range(3)]
    per_mode = {}
    for mode in ("transunet", "standard"):
        rows = [case_metrics(predict_volume(model, v.image, (32, 32), "bilinear", batch_size=2), v.label, 3,
                             mode=mode, spacing=v.spacing) for v in volumes]
        dice, hd95 = np.stack([row[0] for row in rows]), np.stack([row[1] for row in rows])
        per_mode[mode] = summarize(dice, hd95, CLASS_NAMES, mode)
    loader = DataLoader(task.build_eval_dataset(), batch_size=2, collate_fn=task.collate_fn(False))
    with torch.no_grad():
        metrics = task.evaluate(model, loader, Accelerator(cpu=True), tmp_path)
    for key, value in per_mode["transunet"].items():
        assert metrics[key] == pytest.approx(value, abs=1e-12)
    for key, value in per_mode["standard"].items():
        assert math.isclose(metrics[f"standard/{key}"], value, abs_tol=1e-12) or (
            math.isnan(value) and math.isnan(metrics[f"standard/{key}"]))
    assert metrics == result.metrics  # the evaluation at the end of training saw the same model
    # the labels come back at the slice size, not the model's
    labels = task.predict_volume(model, volumes[0])
    assert labels.shape == (4, 36, 40) and labels.dtype == np.uint8 and labels.max() < 3


def test_two_processes_evaluate_like_one(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, result = trained
    one = ["evaluate", "--weights", str(result.weights_path), "--output", str(tmp_path / "one")]
    assert load_cli().main(one) == 0
    assert "3 cases: mean Dice" in capsys.readouterr().out
    two = run_cli("evaluate", "--weights", str(result.weights_path), "--output", str(tmp_path / "two"),
                  launcher=LAUNCH_TWO)
    assert two.returncode == 0, two.stderr[-3000:]
    # 3 cases on 2 processes: the second process's padding repeats a case, which must count once.
    for name in ("summary.txt", "per_case_transunet.csv", "per_case_standard.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text(), name
    saved = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert saved["mean_dice"] == pytest.approx(result.metrics["mean_dice"])


# ---------------------------------------------------------------------------------------- predict
def test_predict_writes_nifti_with_the_input_affine_and_png_label_maps(trained, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    _, result = trained
    rng = np.random.default_rng(3)
    volume = np.stack([synthetic_slice(rng, 36, 40)[0] for _ in range(3)], axis=2) * 400 - 125  # HU, (X, Y, Z)
    affine = np.array([[0.8, 0, 0, -10], [0, 0.8, 0, 20], [0, 0, 2.5, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), tmp_path / "scan.nii.gz")
    image, _ = synthetic_slice(rng, 40, 48)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "slice.png")
    out = tmp_path / "out"
    cli = load_cli()
    assert cli.main(["predict", "--weights", str(result.output_dir), str(tmp_path / "scan.nii.gz"),
                     str(tmp_path / "slice.png"), "--output", str(out), "--cpu"]) == 0
    labels = nib.load(out / "scan.nii.gz")
    np.testing.assert_allclose(labels.affine, affine, atol=1e-6)
    assert labels.shape == (36, 40, 3) and set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2}
    png = np.asarray(Image.open(out / "slice_labels.png"))
    assert png.shape == (40, 48) and png.max() <= 2
    assert (out / "scan_overlay.png").is_file() and (out / "slice_overlay.png").is_file()
    capsys.readouterr()
    assert cli.main(["predict", "--weights", str(result.output_dir), str(tmp_path / "notes.txt"), "--cpu"]) == 1
    assert "notes.txt: not a NIfTI (.nii.gz, .nii) or image" in capsys.readouterr().err


def test_cli_help_explains_every_command() -> None:
    completed = run_cli("--help")
    assert completed.returncode == 0
    for word in ("prepare", "train", "evaluate", "predict", "key.sub=value", "--resume"):
        assert word in completed.stdout
    train_help = run_cli("train", "--help").stdout
    assert "--resume" in train_help and "--config" in train_help and "key.sub=value" in train_help
