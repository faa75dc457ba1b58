"""The training engine on a toy task: it trains, resumes exactly after SIGKILL, refuses NaNs,
accumulates gradients correctly, and runs as two synchronised processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from toy_task import ToyConfig, ToyTask

from vit_training import load_config
from vit_training.cli import cpu_launch_command
from vit_training.loop import NonFiniteLossError, fit

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "toy_task.py"


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state; each in-process run here builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def toy_config(output_dir: Path, *overrides: str) -> ToyConfig:
    return load_config(ToyConfig, None, [f"train.output_dir={output_dir}", *overrides])


def run_toy(*args: str, env: dict | None = None, launcher: list[str] | None = None) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    command = (launcher or [sys.executable]) + [str(TOY), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                            cwd=ROOT)


def finish(process: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def test_fit_trains_and_writes_its_outputs(tmp_path: Path) -> None:
    config = toy_config(tmp_path, "train.epochs=3", "train.ema_decay=0.9")
    result = fit(ToyTask(config), config)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(train_losses) == 36  # 96 samples / batch 8 x 3 epochs, logged every step
    assert sum(train_losses[-6:]) / 6 < 0.25 * sum(train_losses[:6]) / 6
    assert result.metrics["accuracy"] > 0.9 and result.metrics["samples"] == 37
    for name in ("config.yaml", "model.safetensors", "curves.png", "metrics.csv", "visualized.txt"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000036"
    assert load_config(ToyConfig, tmp_path / "config.yaml") == config
    # the exported weights are the EMA model's
    exported = load_file(str(tmp_path / "model.safetensors"))
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(exported[name], tensor)


def test_kill_during_training_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    settings = ["train.epochs=3", "train.save_every_steps=5", "train.keep_last_checkpoints=2"]
    reference = run_toy("fit", f"train.output_dir={tmp_path / 'reference'}", *settings)
    finish(reference)

    killed_dir = tmp_path / "killed"
    victim = run_toy("fit", f"train.output_dir={killed_dir}", *settings, "data.seconds_per_batch=0.1")
    pointer = killed_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not (pointer.exists() and pointer.read_text() >= "step_00000015"):  # mid-epoch 1
        assert victim.poll() is None, victim.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the run never reached step 15"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "model.safetensors").exists()

    finish(run_toy("fit", f"train.output_dir={killed_dir}", *settings, "train.resume=latest"))
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    resumed = load_file(str(killed_dir / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    config = toy_config(tmp_path, "train.save_every_steps=4", "data.nan_at_call=6")
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, batch 6, optimizer step 7"):
        fit(ToyTask(config), config)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000004"
    saved = load_file(str(tmp_path / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert not (tmp_path / "model.safetensors").exists()


def test_nonfinite_loss_can_skip_the_step(tmp_path: Path) -> None:
    config = toy_config(tmp_path, "train.nonfinite_loss=skip", "data.nan_at_call=6", "train.epochs=1")
    result = fit(ToyTask(config), config)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000011"  # 12 batches, one skipped
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_gradient_accumulation_matches_one_larger_batch(tmp_path: Path) -> None:
    # Without dropout the two runs see the same samples in the same order and must agree.
    common = ["train.epochs=2", "optim.weight_decay=0.0", "schedule.warmup_steps=0"]
    results = {}
    for name, overrides in {"big": ["train.batch_size=16"],
                            "accumulated": ["train.batch_size=8", "train.grad_accum_steps=2"]}.items():
        AcceleratorState._reset_state(reset_partial_state=True)
        config = toy_config(tmp_path / name, *common, *overrides)
        task = ToyTask(config)
        task.build_model = lambda task=task: torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(),
                                                                  torch.nn.Linear(32, 3))
        results[name] = fit(task, config).model.state_dict()
    for name, tensor in results["big"].items():
        torch.testing.assert_close(results["accumulated"][name], tensor, atol=1e-5, rtol=1e-4)


def test_two_processes_synchronise_and_evaluate_like_one(tmp_path: Path) -> None:
    launcher = cpu_launch_command(2)
    out_dir = tmp_path / "ddp"
    two = finish(run_toy("fit", f"train.output_dir={out_dir}", "train.epochs=2", env={"ACCELERATE_USE_CPU": "1"},
                         launcher=launcher))
    digests = {p.read_text() for p in out_dir.glob("weights_rank*.sha256")}
    assert len(list(out_dir.glob("weights_rank*.sha256"))) == 2 and len(digests) == 1  # ranks identical
    # 37 evaluation samples over 2 processes x batch 8: gather_for_metrics must drop the padding
    assert two["metrics"]["samples"] == 37
    one = finish(run_toy("evaluate", str(out_dir / "model.safetensors"), f"train.output_dir={tmp_path / 'one'}"))
    two_eval = finish(run_toy("evaluate", str(out_dir / "model.safetensors"), f"train.output_dir={tmp_path / 'two'}",
                              env={"ACCELERATE_USE_CPU": "1"}, launcher=launcher))
    assert one["metrics"]["samples"] == two_eval["metrics"]["samples"] == 37
    assert one["metrics"]["accuracy"] == two_eval["metrics"]["accuracy"]
    assert math.isclose(one["metrics"]["loss"], two_eval["metrics"]["loss"], rel_tol=1e-6)


def test_plain_multi_gpu_launch_on_a_cpu_machine_also_synchronises(tmp_path: Path) -> None:
    # Without ACCELERATE_USE_CPU=1, `--multi_gpu` on a CPU machine starts processes that each
    # think they are alone unless the script asks for the CPU itself; fit() does.
    launcher = cpu_launch_command(2)
    environment = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    process = subprocess.Popen(launcher + [str(TOY), "fit", f"train.output_dir={tmp_path}", "train.epochs=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**environment, "OMP_NUM_THREADS": "1"})
    result = finish(process)
    assert result["metrics"]["samples"] == 37
    digests = [p.read_text() for p in sorted(tmp_path.glob("weights_rank*.sha256"))]
    assert len(digests) == 2 and digests[0] == digests[1]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert max(steps) == 6  # 96 samples / (2 processes x batch 8): the data really was split
