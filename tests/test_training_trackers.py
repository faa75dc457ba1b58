"""Metrics reach Accelerate's trackers (TensorBoard, read back), trackers are checked before training,
mixed precision follows the launcher when the config says auto, and log files get plain lines."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType
from toy_task import ToyConfig, ToyTask

from vit_training import load_config
from vit_training.config import ConfigError
from vit_training.loop import fit
from vit_training.metrics_log import check_trackers


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def toy_config(output_dir: Path, *overrides: str) -> ToyConfig:
    return load_config(ToyConfig, None, [f"train.output_dir={output_dir}", "train.epochs=2", *overrides])


def records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_tracker_receives_the_logged_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tiny_run"
    config = toy_config(run, "train.log_with=[tensorboard]")
    fit(ToyTask(config), config)
    # Accelerate's TensorBoard tracker writes into <project_dir>/<run name>: the run folder / its name
    events = sorted((run / run.name).glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file in {run / run.name}"
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    logged = records(run)
    train = [r for r in logged if r["split"] == "train"]
    evals = [r for r in logged if r["split"] == "eval"]
    scalars = {event.step: event.value for event in accumulator.Scalars("train/loss")}
    assert scalars.keys() == {r["step"] for r in train}
    for record in train:
        assert scalars[record["step"]] == pytest.approx(record["loss"], rel=1e-6)
    accuracy = [(event.step, event.value) for event in accumulator.Scalars("eval/accuracy")]
    assert accuracy == [(r["step"], pytest.approx(r["accuracy"], rel=1e-6)) for r in evals]
    assert (run / "metrics.csv").is_file()  # the local record stays


def test_unknown_or_missing_tracker_is_one_config_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.log_with: unknown tracker 'tensorbord'; expected some of .*tensorboard"):
        check_trackers(["tensorbord"])
    missing = [str(t) for t in LoggerType if str(t) != "all" and t not in get_available_trackers()]
    if missing:
        with pytest.raises(ConfigError, match=rf"tracker '{missing[0]}' is not installed"):
            check_trackers([missing[0]])
    config = toy_config(tmp_path / "run", "train.log_with=[nonsense]")
    with pytest.raises(ConfigError) as error:
        fit(ToyTask(config), config)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


@pytest.mark.parametrize("launcher, expected", [("bf16", "bf16"), ("fp16", "fp16")])
def test_auto_precision_follows_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launcher: str,
                                             expected: str) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    config = toy_config(tmp_path, "train.mixed_precision=auto", "train.epochs=1")
    from vit_training.loop import build_accelerator

    assert build_accelerator(config.train).mixed_precision == expected


def test_explicit_precision_wins_over_the_launcher_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config = toy_config(tmp_path, "train.mixed_precision=no", "train.epochs=1")
    with caplog.at_level(logging.INFO, logger="vit_training"):
        fit(ToyTask(config), config)
    lines = [r.getMessage() for r in caplog.records if "ACCELERATE_MIXED_PRECISION" in r.getMessage()]
    assert lines == ["mixed precision no: train.mixed_precision=no in the config wins over the launcher's "
                     "ACCELERATE_MIXED_PRECISION=bf16"]
    assert "mixed precision no" in caplog.text


def test_log_files_get_plain_lines_and_terminals_a_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    class Terminal(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (False, True):
        AcceleratorState._reset_state(reset_partial_state=True)
        stream = Terminal(tty)
        monkeypatch.setattr("sys.stderr", stream)
        caplog.clear()
        config = toy_config(tmp_path / f"tty_{tty}", "train.epochs=1", "train.log_every_steps=4")
        with caplog.at_level(logging.INFO, logger="vit_training"):
            fit(ToyTask(config), config)
        train_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train ")]
        if tty:
            assert "\r" in stream.getvalue() and train_lines == []
        else:
            assert "\r" not in stream.getvalue() and "it/s" not in stream.getvalue()
            assert [line.split("  ")[0] for line in train_lines] == [
                "train epoch 0 step 4", "train epoch 0 step 8", "train epoch 0 step 12"]
