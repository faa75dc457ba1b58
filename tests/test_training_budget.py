"""Runs measured in optimizer steps: `train.max_steps` and `train.time_budget_min` (with a fake clock)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from toy_task import ToyConfig, ToyTask

from vit_training import load_config
from vit_training.budget import PLAN_FILE, BudgetPlan, count_evaluations, evaluation_steps, plan_budget
from vit_training.config import TrainConfig
from vit_training.loop import fit

# The toy run: 96 samples in batches of 8 = 12 optimizer steps per epoch; 37 evaluation samples = 5 batches.
STEPS_PER_EPOCH = 12


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class FakeClock:
    """Seconds that pass only when the task says so: the budget logic sees a machine of known speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedToyTask(ToyTask):
    """The toy task on a fake clock: each training batch costs `step_s` (`slow_step_s` after `slow_after`
    batches), each evaluation batch `eval_batch_s`; `interrupt_at` raises at that training batch."""

    def __init__(self, config: ToyConfig, clock: FakeClock, step_s: float = 1.0, eval_batch_s: float = 0.5,
                 slow_after: int | None = None, slow_step_s: float = 3.0, interrupt_at: int | None = None) -> None:
        super().__init__(config)
        self.clock, self.step_s, self.eval_batch_s = clock, step_s, eval_batch_s
        self.slow_after, self.slow_step_s, self.interrupt_at = slow_after, slow_step_s, interrupt_at

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt("interrupted by the test")
        slow = self.slow_after is not None and self.calls >= self.slow_after
        self.clock.now += self.slow_step_s if slow else self.step_s
        return super().loss(model, batch)

    def evaluate(self, model: torch.nn.Module, loader: Iterable, accelerator: Any, output_dir: Path
                 ) -> dict[str, float]:
        def ticking() -> Iterator[Any]:
            for batch in loader:
                self.clock.now += self.eval_batch_s
                yield batch

        return super().evaluate(model, ticking(), accelerator, output_dir)


def toy_config(output_dir: Path, *overrides: str) -> ToyConfig:
    return load_config(ToyConfig, None, [f"train.output_dir={output_dir}", *overrides])


def records(output_dir: Path, split: str) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def trainer_state(output_dir: Path) -> dict[str, Any]:
    latest = (output_dir / "checkpoints" / "latest").read_text().strip()
    return json.loads((output_dir / "checkpoints" / latest / "trainer_state.json").read_text())


def test_max_steps_stops_mid_epoch_where_the_schedule_ends(tmp_path: Path) -> None:
    config = toy_config(tmp_path, "train.max_steps=17", "train.epochs=1", "schedule.min_lr_ratio=0.1")
    result = fit(ToyTask(config), config)
    train = records(tmp_path, "train")
    assert [r["step"] for r in train] == list(range(1, 18))  # epochs=1 would have stopped at 12
    # the lr logged after step k is the one of step k + 1: cosine reaches its floor at step 17, not before
    peak = config.optim.lr
    assert train[-1]["lr"] == pytest.approx(0.1 * peak)
    assert train[-2]["lr"] > 0.1 * peak + 1e-6
    # the epoch end still evaluates (eval_every_epochs=1), and the run's end does
    assert [r["step"] for r in records(tmp_path, "eval")] == [12, 17] and result.metrics["samples"] == 37
    state = trainer_state(tmp_path)
    assert (state["epoch"], state["batches_done"], state["global_step"]) == (1, 5, 17)
    assert (tmp_path / "model.safetensors").is_file()


def test_num_evals_spreads_evaluations_over_max_steps(tmp_path: Path) -> None:
    config = toy_config(tmp_path, "train.max_steps=30", "train.num_evals=3")
    fit(ToyTask(config), config)
    assert [r["step"] for r in records(tmp_path, "eval")] == [10, 20, 30]


def test_plan_fills_the_safety_share_of_the_budget() -> None:
    train = TrainConfig(time_budget_min=1.0, budget_safety=0.9, num_evals=2)
    plan = plan_budget(train, step_s=1.0, eval_s=2.5, done_steps=6, elapsed_s=7.0, steps_per_epoch=12)
    # 54 s planned - 7 s spent = 47 s: (T - 6) steps of 1 s + 2 evaluations of 2.5 s
    assert plan.total_steps == 48 and plan.evaluations == 2 and plan.eval_steps == [24, 48]
    assert BudgetPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    capped = plan_budget(TrainConfig(time_budget_min=1.0, max_steps=20), step_s=1.0, eval_s=0.0, done_steps=6,
                         elapsed_s=7.0, steps_per_epoch=12)
    assert capped.total_steps == 20
    # evaluations at epoch ends: one per 12 steps after the probe, plus the final one mid-epoch
    assert count_evaluations(TrainConfig(), 30, 6, 12) == 3
    assert evaluation_steps(TrainConfig(eval_every_steps=10), 25) == [10, 20, 25]


def test_time_budget_plans_from_the_first_steps_and_sets_the_schedule(tmp_path: Path) -> None:
    clock = FakeClock()
    config = toy_config(tmp_path, "train.time_budget_min=1", "train.budget_safety=0.9", "train.budget_probe_steps=4",
                        "train.num_evals=2", "schedule.min_lr_ratio=0.1")
    result = fit(TimedToyTask(config, clock), config, clock=clock)
    plan = json.loads((tmp_path / PLAN_FILE).read_text())
    # probe: 2 untimed + 4 timed steps of 1 s (6 s), evaluation of 2 batches (16 of 37 samples) in 1 s
    assert plan["step_s"] == pytest.approx(1.0) and plan["eval_s"] == pytest.approx(37 / 16)
    assert plan["planned_at_step"] == 6 and plan["planned_at_s"] == pytest.approx(7.0)
    assert plan["total_steps"] == 48  # (54 - 7 - 2 x 37/16) s of 1-s steps after the 6 done
    train = records(tmp_path, "train")
    assert train[-1]["step"] == 48 and train[-1]["lr"] == pytest.approx(0.1 * config.optim.lr)
    assert [r["step"] for r in records(tmp_path, "eval")] == [24, 48]
    assert clock.now < 60 and result.metrics["samples"] == 37
    assert trainer_state(tmp_path)["plan"] == plan
    assert not (tmp_path / "budget_probe").exists()


def test_time_budget_stops_hard_then_evaluates_and_exports(tmp_path: Path) -> None:
    clock = FakeClock()
    config = toy_config(tmp_path, "train.time_budget_min=1", "train.budget_safety=0.9", "train.budget_probe_steps=4",
                        "train.num_evals=1")
    # steps become 3x slower once the plan is made: the plan overruns and the clock must stop the run
    fit(TimedToyTask(config, clock, slow_after=6), config, clock=clock)
    plan = json.loads((tmp_path / PLAN_FILE).read_text())
    assert plan["total_steps"] == 50
    stop = 6 + 18  # 7 s + 18 steps of 3 s = 61 s >= 60 s
    assert records(tmp_path, "train")[-1]["step"] == stop
    assert [r["step"] for r in records(tmp_path, "eval")] == [stop]
    assert trainer_state(tmp_path)["global_step"] == stop
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "curves.png").is_file()


def test_resume_inside_a_budgeted_run_keeps_the_plan_and_ends_at_the_same_step(tmp_path: Path) -> None:
    settings = ["train.time_budget_min=1", "train.budget_safety=0.9", "train.budget_probe_steps=4",
                "train.num_evals=2", "train.save_every_steps=10"]
    reference_dir = tmp_path / "reference"
    config = toy_config(reference_dir, *settings)
    clock = FakeClock()
    fit(TimedToyTask(config, clock), config, clock=clock)

    run_dir = tmp_path / "interrupted"
    config = toy_config(run_dir, *settings)
    clock = FakeClock()
    with pytest.raises(KeyboardInterrupt):
        fit(TimedToyTask(config, clock, interrupt_at=22), config, clock=clock)
    assert trainer_state(run_dir)["global_step"] == 20
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = toy_config(run_dir, *settings, "train.resume=latest")
    clock = FakeClock()  # a new process: its clock starts again; the checkpoint holds the time already spent
    fit(TimedToyTask(resumed, clock), resumed, clock=clock)

    reference_plan = json.loads((reference_dir / PLAN_FILE).read_text())
    assert trainer_state(run_dir)["plan"] == reference_plan
    assert records(run_dir, "train")[-1]["step"] == reference_plan["total_steps"] == 48
    assert [r["step"] for r in records(run_dir, "eval")] == [24, 48]
    expected = load_file(str(reference_dir / "model.safetensors"))
    for name, tensor in load_file(str(run_dir / "model.safetensors")).items():
        assert torch.equal(tensor, expected[name]), name


def test_budget_plan_shortens_a_longer_warmup_and_warns_of_the_ema_with_the_planned_steps(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The run's length is known only once planned: both checks run then, with its numbers."""
    clock = FakeClock()
    config = toy_config(tmp_path, "train.time_budget_min=1", "train.budget_safety=0.9", "train.budget_probe_steps=4",
                        "train.num_evals=2", "schedule.min_lr_ratio=0.1", "schedule.warmup_steps=100",
                        "train.ema_decay=0.99", "train.ema_warmup=false")
    with caplog.at_level("INFO", logger="vit_training"):
        fit(TimedToyTask(config, clock), config, clock=clock)
    assert json.loads((tmp_path / PLAN_FILE).read_text())["total_steps"] == 48
    assert ("schedule.warmup_steps=100 is not shorter than the run (48 optimizer steps): warm-up shortened to 4 steps"
            in caplog.text)
    assert "EMA: train.ema_decay=0.99 over 48 optimizer steps leaves 61.7% of the random initial weights" in caplog.text
    train = records(tmp_path, "train")
    assert train[-1]["step"] == 48 and train[-1]["lr"] == pytest.approx(0.1 * config.optim.lr)  # the decay ran its course
    assert (tmp_path / "model.safetensors").is_file()
