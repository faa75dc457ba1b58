"""Runs planned in optimizer steps: `train.max_steps` and `train.time_budget_min`.

A learning-rate schedule must know its length before it decays, but a wall-clock budget is
not a number of steps. `fit` therefore plans a budgeted run in one place, here:

  1. it trains the run's own first optimizer steps: `PROBE_WARMUP_STEPS` untimed ones
     (first-touch allocations, kernel selection), then `train.budget_probe_steps` timed ones
     (their mean is the step time: the run's training time is steps x mean);
  2. it evaluates the model on a few batches of the evaluation set and scales that time to the
     whole set (the evaluation cost);
  3. `plan_budget` gives the most optimizer steps whose training plus the evaluations they
     bring fill `train.budget_safety` of the budget, less the time already spent;
  4. the schedule's horizon is set to the planned steps (`schedule.set_horizon`), and the loop
     still stops hard when the budget runs out.

The plan is written to the run folder (`budget_plan.json`) and into every checkpoint's trainer
state, so a resumed run keeps it rather than planning again.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig

__all__ = ["PLAN_FILE", "PROBE_EVAL_BATCHES", "PROBE_WARMUP_STEPS", "BudgetPlan", "count_evaluations",
           "evaluation_steps", "plan_budget", "run_steps"]

PLAN_FILE = "budget_plan.json"
PROBE_WARMUP_STEPS = 2  # untimed optimizer steps before the probe's timed ones
PROBE_EVAL_BATCHES = 2  # evaluation batches (per process) the probe times and scales to the whole set


@dataclass
class BudgetPlan:
    """A budgeted run's plan, made once after the probe and kept across resumes.

    Attributes:
        budget_s: the wall budget in seconds (`train.time_budget_min` x 60).
        safety: the share of the budget planned (`train.budget_safety`).
        step_s: measured seconds per optimizer step (mean of the probe's timed steps; the
            slowest process's when there are several).
        eval_s: estimated seconds per evaluation of the whole evaluation set (0 without one).
        planned_at_step: optimizer steps done when the plan was made (the probe's).
        planned_at_s: seconds since the start of the run when the plan was made.
        total_steps: the optimizer steps the run plans to take (the schedule's horizon).
        evaluations: evaluations the plan counted after `planned_at_step`, the final one included.
        eval_steps: optimizer steps after which the run evaluates when evaluation is step-based
            (`train.num_evals` / `train.eval_every_steps`); empty when it evaluates at epoch ends.
    """

    budget_s: float
    safety: float
    step_s: float
    eval_s: float
    planned_at_step: int
    planned_at_s: float
    total_steps: int
    evaluations: int
    eval_steps: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BudgetPlan:
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def describe(self) -> str:
        """One log line: the plan and the figures it was made from."""
        return (f"budget plan: {self.total_steps} optimizer steps and {self.evaluations} evaluation(s) for "
                f"{self.safety:.0%} of {self.budget_s / 60:g} min ({self.step_s * 1000:.1f} ms per step measured "
                f"over the first steps, ~{self.eval_s:.1f} s per evaluation, {self.planned_at_s:.1f} s spent "
                f"before the plan at step {self.planned_at_step})")


def step_based_evaluation(train: TrainConfig) -> bool:
    """True when the run evaluates at optimizer steps (`num_evals`, `eval_every_steps`), not at epoch ends."""
    return bool(train.num_evals or train.eval_every_steps)


def evaluation_steps(train: TrainConfig, total_steps: int) -> list[int]:
    """The optimizer steps after which a step-based run of `total_steps` evaluates, sorted; the last is always there.

    `num_evals` spreads its evaluations evenly (step round(total * i / n), i = 1..n);
    `eval_every_steps` evaluates at its multiples. Empty for runs that evaluate at epoch ends.
    """
    if not step_based_evaluation(train):
        return []
    if train.num_evals:
        steps = {max(1, round(total_steps * i / train.num_evals)) for i in range(1, train.num_evals + 1)}
    else:
        steps = set(range(train.eval_every_steps, total_steps + 1, train.eval_every_steps))
    steps.add(total_steps)
    return sorted(step for step in steps if step <= total_steps)


def count_evaluations(train: TrainConfig, total_steps: int, done_steps: int, steps_per_epoch: int) -> int:
    """Evaluations a run of `total_steps` does after step `done_steps` (the final one included)."""
    if step_based_evaluation(train):
        return sum(step > done_steps for step in evaluation_steps(train, total_steps))
    if not train.eval_every_epochs:
        return 1
    period = steps_per_epoch * train.eval_every_epochs
    at_epoch_ends = total_steps // period - done_steps // period
    return at_epoch_ends + (0 if total_steps % period == 0 else 1)


def run_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    """The optimizer steps of a run that is not budgeted: `max_steps`, else `epochs` whole epochs."""
    return train.max_steps or steps_per_epoch * train.epochs


def plan_budget(train: TrainConfig, *, step_s: float, eval_s: float, done_steps: int, elapsed_s: float,
                steps_per_epoch: int) -> BudgetPlan:
    """The most optimizer steps whose training and evaluations fit `budget_safety` of the budget.

    Args:
        train: the run's settings (`time_budget_min`, `budget_safety`, `max_steps`, evaluation cadence).
        step_s: seconds per optimizer step, measured.
        eval_s: seconds per evaluation, estimated (0 without an evaluation set).
        done_steps: optimizer steps already taken (the probe's); the plan never asks for fewer.
        elapsed_s: seconds of the budget already spent.
        steps_per_epoch: optimizer steps per epoch (for evaluations at epoch ends).
    """
    if train.time_budget_min is None:
        raise ValueError("plan_budget needs train.time_budget_min")
    if not step_s > 0:
        raise ValueError(f"step_s={step_s} must be > 0 (seconds per optimizer step)")
    budget_s = train.time_budget_min * 60
    available = train.budget_safety * budget_s - elapsed_s

    def cost(total: int) -> float:
        return (total - done_steps) * step_s + count_evaluations(train, total, done_steps, steps_per_epoch) * eval_s

    # cost() never decreases with `total` (more steps never bring fewer evaluations): bisect.
    low, high = done_steps, done_steps + max(0, math.floor(available / step_s))
    if train.max_steps is not None:
        high = max(done_steps, min(high, train.max_steps))
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= available:
            low = middle
        else:
            high = middle - 1
    total = max(low, done_steps, 1)
    return BudgetPlan(budget_s=budget_s, safety=train.budget_safety, step_s=step_s, eval_s=eval_s,
                      planned_at_step=done_steps, planned_at_s=elapsed_s, total_steps=total,
                      evaluations=count_evaluations(train, total, done_steps, steps_per_epoch),
                      eval_steps=evaluation_steps(train, total))
