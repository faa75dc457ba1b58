"""The one command line runner (`vit_training.cli`) for every task: config lookup, --print-config,
the error policy (exit 2 config errors, 1 missing files / invalid data, one stderr line, --debug for
the traceback), the ``vitasks`` console script, and the example fourth task end to end.

Everything runs in-process through `run_task` on tiny generated data (no training except the
example's few steps), except the console-script checks, which run `vitasks` from another folder.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from accelerate.state import AcceleratorState
from PIL import Image

from vit_training.cli import (
    ConfigError,
    TaskCommands,
    discover_tasks,
    error_line,
    find_config,
    run_task,
    shipped_config_names,
)
from vit_training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TASKS = discover_tasks()
# Each task's CPU config, with a model small enough that building it costs nothing here.
CPU_CONFIGS = {
    "classify": ("fashion_mnist_cpu", ["model.backbone.depth=1", "train.batch_size=2"]),
    "detect": ("fashion_scenes_cpu", ["model.backbone.depth=1", "model.enc_layers=1", "model.dec_layers=1",
                                      "train.batch_size=2"]),
    "segment": ("mri_lobes_cpu", ["model.backbone.depth=1", "train.batch_size=2"]),
}


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state; each in-process command builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(spec: TaskCommands, *argv: str) -> int:
    return run_task(spec, list(argv), prog=f"{spec.name}.py")


def one_error_line(capsys: pytest.CaptureFixture, spec: TaskCommands) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line[:2].isdigit()]  # minus log lines
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(f"{spec.name}.py ")
    return lines[0]


def train_args(name: str, *extra: str) -> list[str]:
    config, overrides = CPU_CONFIGS[name]
    return ["train", "--config", config, *overrides, *extra]


# ------------------------------------------------------------------------------------------ registry
def test_the_three_tasks_are_registered() -> None:
    assert {"classify", "detect", "segment"} <= set(TASKS)
    for spec in TASKS.values():
        assert shipped_config_names(spec), spec.name


def test_every_task_package_registers_its_commands() -> None:
    """Each package under packages/ other than the shared two is a task with a registered command line."""
    packages = {p.name for p in (ROOT / "packages").iterdir() if (p / "__init__.py").exists()}
    assert {spec.package for spec in TASKS.values()} == packages - {"vit_backbone", "vit_training"}


@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_a_config_named_without_a_path_resolves(name: str) -> None:
    spec = TASKS[name]
    config = CPU_CONFIGS[name][0]
    assert find_config(spec, config) == find_config(spec, f"{config}.yaml")
    assert find_config(spec, config).resolve() == (ROOT / "configs" / spec.config_folder / f"{config}.yaml").resolve()
    # An existing path is used as given.
    assert find_config(spec, ROOT / "configs" / spec.config_folder / f"{config}.yaml").is_file()


@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_an_unknown_config_name_lists_the_shipped_ones(name: str, capsys: pytest.CaptureFixture) -> None:
    spec = TASKS[name]
    assert run(spec, "train", "--config", "no_such_config") == 2
    line = one_error_line(capsys, spec)
    assert "no_such_config" in line and CPU_CONFIGS[name][0] in line


# ------------------------------------------------------------------------------------------ --print-config
@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_print_config_prints_yaml_that_loads_back_equal(name: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    spec = TASKS[name]
    assert run(spec, *train_args(name, "train.epochs=3", "--print-config")) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["train"]["epochs"] == 3
    (tmp_path / "printed.yaml").write_text(printed)
    config, overrides = CPU_CONFIGS[name]
    expected = load_config(spec.config_schema, find_config(spec, config), [*overrides, "train.epochs=3"])
    assert load_config(spec.config_schema, tmp_path / "printed.yaml") == expected


def test_print_config_of_evaluate_reads_the_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = TASKS["classify"]
    assert run(spec, *train_args("classify", f"train.output_dir={tmp_path}", "--print-config")) == 0
    (tmp_path / "config.yaml").write_text(capsys.readouterr().out)
    assert run(spec, "evaluate", "--weights", str(tmp_path), "--print-config", "train.seed=5") == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["seed"] == 5


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_a_config_typo_exits_2_with_one_line(name: str, capsys: pytest.CaptureFixture) -> None:
    spec = TASKS[name]
    assert run(spec, *train_args(name, "train.epochz=1")) == 2
    line = one_error_line(capsys, spec)
    assert "config error" in line and "train.epochz" in line and "epochs" in line


@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_debug_shows_the_traceback(name: str) -> None:
    spec = TASKS[name]
    with pytest.raises(ConfigError, match="train.epochz"):
        run(spec, "--debug", *train_args(name, "train.epochz=1"))
    with pytest.raises(ConfigError, match="train.epochz"):
        run(spec, *train_args(name, "train.epochz=1", "--debug"))


@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_missing_data_exits_1_with_one_line(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = TASKS[name]
    missing = tmp_path / "missing"
    extra = ["data.format=imagefolder"] if name == "classify" else []
    assert run(spec, *train_args(name, *extra, f"data.root={missing}", f"train.output_dir={tmp_path / 'run'}")) == 1
    assert str(missing) in one_error_line(capsys, spec)


def test_missing_weights_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = TASKS["detect"]
    config = find_config(spec, CPU_CONFIGS["detect"][0])
    assert run(spec, "predict", "--weights", str(tmp_path / "none"), "--config", str(config), "x.png") == 1
    assert "none" in one_error_line(capsys, spec)


def write_corrupt_imagefolder(root: Path) -> None:
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            (root / split / label / f"{label}1.png").write_bytes(b"not a png")
            (root / split / label / f"{label}2.png").write_bytes(b"not a png either")


def write_malformed_coco(root: Path) -> None:
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        Image.new("RGB", (48, 48)).save(root / split / "1.png")
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text('{"images": [{"id": 1,')


def write_corrupt_synapse(root: Path) -> None:
    (root / "train_npz").mkdir(parents=True)
    (root / "lists").mkdir()
    for index in range(4):
        (root / "train_npz" / f"case0001_slice{index:03d}.npz").write_bytes(b"garbage")
    (root / "lists" / "train.txt").write_text("\n".join(f"case0001_slice{i:03d}" for i in range(4)) + "\n")
    (root / "test_vol_h5").mkdir()
    (root / "test_vol_h5" / "case0011.npy.h5").write_bytes(b"not HDF5")
    (root / "lists" / "test_vol.txt").write_text("case0011\n")


@pytest.mark.parametrize("name", sorted(CPU_CONFIGS))
def test_invalid_data_exits_1_with_one_line(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = TASKS[name]
    root = tmp_path / "data"
    if name == "classify":
        write_corrupt_imagefolder(root)
        # One DataLoader worker: its error comes back wrapped by torch and must be unwrapped.
        extra = ["data.format=imagefolder", "data.channels=1", "train.num_workers=1"]
    elif name == "detect":
        write_malformed_coco(root)
        extra = []
    else:
        write_corrupt_synapse(root)
        extra = []
    assert run(spec, *train_args(name, *extra, f"data.root={root}", f"train.output_dir={tmp_path / 'run'}")) == 1
    line = one_error_line(capsys, spec)
    assert str(root) in line and "not found" not in line and "DataLoader worker" not in line, line


def test_an_error_of_a_dataloader_worker_is_unwrapped_to_its_message() -> None:
    from torch._utils import ExceptionWrapper

    try:
        raise ValueError("data/x.png: cannot read image")
    except ValueError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError) as caught:
        wrapper.reraise()
    assert "Traceback" in str(caught.value)
    assert error_line(caught.value) == "data/x.png: cannot read image"


# ------------------------------------------------------------------------------------------ console script
def vitasks(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("vitasks")
    assert script.exists(), "the vitasks console script is missing: pip install -e . (or make setup)"
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_vitasks_help_lists_the_tasks_from_any_folder(tmp_path: Path) -> None:
    top = vitasks("--help", cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    for name in ("classify", "detect", "segment", "exit status"):
        assert name in top.stdout
    task = vitasks("classify", "--help", cwd=tmp_path)
    assert task.returncode == 0, task.stderr
    for word in ("train", "evaluate", "predict", "examples:"):
        assert word in task.stdout
    typo = vitasks("classify", "train", "--config", "fashion_mnist_cpu", "train.epochz=1", cwd=tmp_path)
    assert typo.returncode == 2 and len(typo.stderr.strip().splitlines()) == 1, typo.stderr
    debug = vitasks("--debug", "classify", "train", "--config", "fashion_mnist_cpu", "train.epochz=1", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ------------------------------------------------------------------------------------------ the example task
def load_example():
    path = ROOT / "examples" / "linear_probe" / "linear_probe.py"
    spec = importlib.util.spec_from_file_location("linear_probe_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_the_example_task_trains_evaluates_and_prints_its_config(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    commands = load_example().COMMANDS
    run_dir = tmp_path / "run"
    small = ["num_train=64", "num_eval=32", "train.epochs=2", "train.batch_size=16", f"train.output_dir={run_dir}"]
    assert run(commands, "train", "--config", "brightness_cpu", *small) == 0
    out = capsys.readouterr().out
    assert "evaluation: mse" in out and (run_dir / "model.safetensors").is_file()
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run(commands, "evaluate", "--weights", str(run_dir)) == 0
    record = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert record["images"] == 32 and 0 <= record["mse"] < 1
    assert "32 images: mse" in capsys.readouterr().out
    assert run(commands, "evaluate", "--weights", str(run_dir), "--print-config") == 0
    assert yaml.safe_load(capsys.readouterr().out)["num_train"] == 64
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(image)
    assert run(commands, "predict", "--weights", str(run_dir), str(image), "--cpu") == 0
    assert "brightness" in capsys.readouterr().out
