"""Learning-rate schedules counted in optimizer steps: linear warmup, then cosine, step, poly or constant.

The schedule is one multiplicative factor f(step) applied to every group's initial lr
(`LambdaLR`), so per-group scales from layer decay (`optim.param_groups`) keep their ratios
at every step. Step k is the k-th optimizer step of the run (0-based); the lr used by that step is
``group_lr * f(k)``:

    warmup   f(k) = (k + 1) / (W + 1)                                   for k < W
    cosine   f(k) = m + (1 - m) * (1 + cos(pi * (k - W) / (T - W))) / 2  for W <= k  (m at k >= T)
    step     f(k) = gamma ** (number of milestones <= k)                 for W <= k
    poly     f(k) = (1 - (k - W) / (T - W)) ** power                     for W <= k
    constant f(k) = 1                                                    for W <= k

with W warmup steps, T total steps and m = min_lr_ratio. The warmup starts near zero but not
at zero (a step at lr 0 would be wasted) and reaches exactly 1 at k = W.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from .config import ScheduleConfig


def warmup_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> int:
    """The warmup length in optimizer steps, from `warmup_steps` or `warmup_epochs`."""
    if cfg.warmup_epochs:
        return round(cfg.warmup_epochs * steps_per_epoch)
    return cfg.warmup_steps


# A warm-up that would not end before the run does is cut to this share of the run's optimizer steps.
SHORTENED_WARMUP_SHARE = 0.1


def fit_warmup(cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> tuple[ScheduleConfig, str | None]:
    """`cfg` with a warm-up that ends before the run does, and a one-line warning when it had to be cut.

    A warm-up of `total_steps` or more optimizer steps would leave the lr rising for the whole run
    (it never reaches its peak nor decays); it is cut to `SHORTENED_WARMUP_SHARE` of the run
    instead (0 for a run of fewer than 1 / that share steps).

    Returns:
        (the schedule to use, None) when the warm-up fits; else (a copy with `warmup_steps` set to
        the shortened length and `warmup_epochs` 0, the warning).
    """
    warmup = warmup_steps(cfg, steps_per_epoch)
    if warmup < total_steps:
        return cfg, None
    shortened = int(total_steps * SHORTENED_WARMUP_SHARE)
    given = f"warmup_epochs={cfg.warmup_epochs} ({warmup} steps)" if cfg.warmup_epochs else f"warmup_steps={warmup}"
    message = (f"schedule.{given} is not shorter than the run ({total_steps} optimizer steps): warm-up shortened "
               f"to {shortened} steps ({SHORTENED_WARMUP_SHARE:.0%} of the run); set schedule.warmup_steps below "
               f"{total_steps} to choose it")
    return dataclasses.replace(cfg, warmup_steps=shortened, warmup_epochs=0.0), message


def milestone_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> list[int]:
    """The "step" schedule's milestones in optimizer steps, sorted."""
    if cfg.milestone_epochs:
        return sorted(round(epoch * steps_per_epoch) for epoch in cfg.milestone_epochs)
    return sorted(cfg.milestone_steps)


def _check_lengths(cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> tuple[int, list[int]]:
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1 (optimizer steps in the run)")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1 (optimizer steps per epoch)")
    warmup = warmup_steps(cfg, steps_per_epoch)
    if warmup >= total_steps:
        given = f"warmup_epochs={cfg.warmup_epochs} ({warmup} steps)" if cfg.warmup_epochs else f"warmup_steps={warmup}"
        raise ValueError(f"schedule.{given} is not shorter than the run ({total_steps} optimizer steps)")
    milestones = milestone_steps(cfg, steps_per_epoch) if cfg.name == "step" else []
    for step in milestones:
        # A milestone inside the warmup or past the end never changes the lr: surely a mistake.
        if not warmup < step < total_steps:
            raise ValueError(
                f"schedule milestone at optimizer step {step} lies outside ({warmup}, {total_steps}) "
                f"(after warmup, before the end); milestones given: "
                f"{list(cfg.milestone_epochs) or list(cfg.milestone_steps)} "
                f"{'epochs' if cfg.milestone_epochs else 'steps'} at {steps_per_epoch} steps/epoch"
            )
    return warmup, milestones


def lr_factor_fn(cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule's factor f(step) (see the module docstring), for `LambdaLR` or a plot.

    Args:
        cfg: the schedule section of the config.
        total_steps: optimizer steps in the whole run (epochs * steps_per_epoch).
        steps_per_epoch: optimizer steps per epoch (batches per process / grad_accum_steps).
    """
    if cfg.name not in ("cosine", "step", "poly", "constant"):
        raise ValueError(f"schedule.name={cfg.name!r} is not one of cosine, step, poly, constant")
    warmup, milestones = _check_lengths(cfg, total_steps, steps_per_epoch)
    name, min_ratio, gamma, power = cfg.name, cfg.min_lr_ratio, cfg.gamma, cfg.power

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if name == "cosine":
            progress = min(1.0, (step - warmup) / (total_steps - warmup))
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "step":
            return gamma ** sum(step >= milestone for milestone in milestones)
        if name == "poly":
            # TransUNet: base_lr * (1 - iter / max_iter) ** 0.9, stepped after each iteration.
            return max(0.0, 1.0 - (step - warmup) / (total_steps - warmup)) ** power
        return 1.0  # constant

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` that follows `cfg` over `total_steps` optimizer steps.

    Build it from the optimizer before `Accelerator.prepare` and call `scheduler.step()` once
    per optimizer step. (A scheduler passed through `prepare` steps once per process per call,
    which would run this schedule num_processes times too fast.) Its `state_dict` holds the step
    count only; on resume, build it again from the config and `load_state_dict`.

    Args:
        optimizer: e.g. from `optim.build_optimizer`; each group's current lr is its peak lr.
        cfg: the schedule section of the config.
        total_steps: optimizer steps in the whole run.
        steps_per_epoch: optimizer steps per epoch, to convert `warmup_epochs` and `milestone_epochs`.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg, total_steps, steps_per_epoch))


def set_horizon(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: ScheduleConfig, total_steps: int,
                steps_per_epoch: int) -> None:
    """Make `scheduler` follow `cfg` over `total_steps` optimizer steps from its current step on.

    A budgeted run knows its length only after its first steps (`vit_training.budget`); it
    starts on a provisional horizon and is re-planned here. The warm-up does not depend on the
    horizon, so a plan made during the warm-up changes no lr already used. The current lr is
    recomputed at once, for the next optimizer step.
    """
    factor = lr_factor_fn(cfg, total_steps, steps_per_epoch)
    scheduler.lr_lambdas = [factor] * len(scheduler.optimizer.param_groups)
    lrs = [base * factor(scheduler.last_epoch) for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
