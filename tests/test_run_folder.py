"""Run folders through the CLI runner: a fresh run refuses an old run's folder (untouched, byte for byte),
--overwrite starts over without touching a user's own files, rotation survives leftover checkpoints,
and the trained weights are on disk before the final evaluation (which may fail or be killed)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from toy_task import COMMANDS, ToyConfig, ToyTask

from vit_training import load_config
from vit_training.checkpoint import LATEST_POINTER, TRAINER_STATE, find_resume_checkpoint
from vit_training.cli import run_task
from vit_training.loop import load_weights_for_inference

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "toy_task.py"


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state; each in-process command builds its own.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text("train:\n  epochs: 1\n  log_every_steps: 4\n")
    return path


def train(config_file: Path, run: Path, *argv: str) -> int:
    return run_task(COMMANDS, ["train", "--config", str(config_file), f"train.output_dir={run}", *argv])


def hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def error_lines(err: str) -> list[str]:
    """stderr minus the log lines (which start with a clock time)."""
    return [line for line in err.splitlines() if line.strip() and not line[:2].isdigit()]


def steps(run: Path) -> list[int]:
    return sorted(int(path.name.split("_")[1]) for path in (run / "checkpoints").glob("step_*"))


def latest_is_complete(run: Path) -> bool:
    named = run / "checkpoints" / (run / "checkpoints" / LATEST_POINTER).read_text().strip()
    return (named / TRAINER_STATE).is_file()


def test_rerun_into_an_old_run_refuses_in_one_line_and_leaves_it_byte_identical(
        tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert train(config_file, run) == 0
    before = hashes(run)
    capsys.readouterr()
    assert train(config_file, run, "train.epochs=2") == 1
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vitasks toy train: ") and "already holds a run" in lines[0]
    assert "--resume latest" in lines[0] and "--overwrite" in lines[0]
    assert hashes(run) == before


def test_overwrite_leaves_only_the_new_run_and_the_users_own_files(tmp_path: Path, config_file: Path) -> None:
    run = tmp_path / "run"
    assert train(config_file, run, "train.epochs=3", "train.keep_last_checkpoints=3") == 0
    assert steps(run) == [12, 24, 36]
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{}")  # the evaluate command's default folder
    (run / "toy_macro.txt").write_text("old")  # a file of the task's evaluation (evaluate_files)
    (run / "my_notes.txt").write_text("mine")  # the user's own
    assert train(config_file, run, "--overwrite") == 0
    assert steps(run) == [12] and latest_is_complete(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(record["step"] for record in records) == 12  # the old run's log is gone, not appended to
    assert not (run / "eval").exists() and not (run / "toy_macro.txt").exists()
    assert (run / "my_notes.txt").read_text() == "mine"
    assert load_config(ToyConfig, run / "config.yaml").train.epochs == 1


def test_overwrite_and_resume_together_are_a_config_error(tmp_path: Path, config_file: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert train(config_file, tmp_path / "run", "--overwrite", "--resume", "latest") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "overwrite" in lines[0] and "resume" in lines[0]


def test_resume_latest_into_an_empty_folder_says_so_and_starts_fresh(tmp_path: Path, config_file: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    assert train(config_file, run, "--resume") == 0
    err = caplog.text
    assert "holds no checkpoint yet; starting a fresh run" in err
    assert steps(run) == [12]


def test_resume_from_an_earlier_checkpoint_rotates_out_the_abandoned_later_ones(
        tmp_path: Path, config_file: Path) -> None:
    """Leftover checkpoints of higher steps neither block the new saves nor outlive them."""
    run = tmp_path / "run"
    assert train(config_file, run, "train.epochs=3", "train.keep_last_checkpoints=3") == 0
    original = load_file(str(run / "model.safetensors"))
    AcceleratorState._reset_state(reset_partial_state=True)
    earlier = run / "checkpoints" / "step_00000012"
    assert train(config_file, run, "train.epochs=3", "train.keep_last_checkpoints=2", "--resume", str(earlier)) == 0
    assert steps(run) == [24, 36] and latest_is_complete(run)
    resumed = load_file(str(run / "model.safetensors"))
    assert all((resumed[key] == original[key]).all() for key in original)  # an exact resume, over the old steps


def test_failing_final_evaluation_keeps_the_weights_and_names_the_evaluate_command(
        tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    status = train(config_file, run, "train.eval_every_epochs=0", "data.eval_error=case 3 has label 7 outside 0..2")
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert status == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "final evaluation failed" in lines[0] and "case 3 has label 7 outside 0..2" in lines[0]
    assert lines[0].endswith(f"vitasks toy evaluate --weights {run}")
    config = load_config(ToyConfig, run / "config.yaml")
    load_weights_for_inference(ToyTask(config).build_model(), run)  # loads strictly
    assert find_resume_checkpoint(run, "latest") == run / "checkpoints" / "step_00000012"
    assert (run / "curves.png").is_file()


def test_kill_during_the_final_evaluation_leaves_the_weights(tmp_path: Path, config_file: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "evaluating"
    victim = subprocess.Popen(
        [sys.executable, str(TOY), "cli", "train", "--config", str(config_file), f"train.output_dir={run}",
         "train.eval_every_epochs=0", f"data.eval_block_file={marker}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the final evaluation never started"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    config = load_config(ToyConfig, run / "config.yaml")
    load_weights_for_inference(ToyTask(config).build_model(), run / "model.safetensors")
    assert latest_is_complete(run) and steps(run) == [12]


def test_ema_that_would_export_mostly_random_weights_is_warned_with_the_numbers(
        tmp_path: Path, config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert train(config_file, tmp_path / "fixed", "train.ema_decay=0.995", "train.ema_warmup=false") == 0
    err = caplog.text
    # 0.995 ** 12 = 94.2% of the initial weights after the run's 12 optimizer steps.
    assert "EMA: train.ema_decay=0.995 over 12 optimizer steps leaves 94.2% of the random initial weights" in err
    assert "set train.ema_warmup=true (then < 0.1%), or train.ema_decay <= 0.6813" in err
    AcceleratorState._reset_state(reset_partial_state=True)
    caplog.clear()
    assert train(config_file, tmp_path / "warm", "train.ema_decay=0.995") == 0  # the warm-up is on by default
    assert "EMA:" not in caplog.text


def test_warmup_longer_than_the_run_is_shortened_with_a_warning(tmp_path: Path, config_file: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    assert train(config_file, run, "schedule.warmup_steps=100", "train.log_every_steps=1") == 0
    err = caplog.text
    assert ("schedule.warmup_steps=100 is not shorter than the run (12 optimizer steps): warm-up shortened to 1 "
            "steps") in err
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "train"]
    assert lrs[0] == max(lrs) and lrs[-1] < 0.01 * max(lrs)  # (the lr of the next step) peak after the 1-step warm-up, then the decay


def test_a_run_that_fails_while_setting_up_does_not_block_the_next(tmp_path: Path, config_file: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert train(config_file, run, "train.batch_size=500") == 1  # larger than the 96 training samples
    assert "larger than the training set" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train(config_file, run) == 0
