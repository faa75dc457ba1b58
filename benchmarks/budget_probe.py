"""The timed probe of the wall-budget benchmarks: how long one optimizer step of a recipe takes.

`benchmarks/classification_time_to_accuracy.py` and `benchmarks/segmentation.py` turn a wall
budget into a number of epochs; both time the same thing first, with this function: the
task's own loss, backward, gradient clipping and optimizer step on real batches, loading
included.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch

from vit_training import build_optimizer


def median_step_seconds(task: Any, model: torch.nn.Module, loader: Iterable, config: Any, steps: int,
                        warmup_steps: int) -> float:
    """Median wall seconds of one training step of `task` on `model`, batches drawn from `loader`.

    Args:
        task: a vit_training Task (its `loss(model, batch)` gives the loss).
        model: a throwaway model (it is trained by the probe).
        loader: yields the task's training batches; restarted when it runs out.
        config: the run config (`optim` builds the optimizer, `train.clip_grad_norm` clips).
        steps: timed steps.
        warmup_steps: untimed steps first (first-touch allocations, oneDNN kernel selection).
    """
    optimizer = build_optimizer(model, config.optim)
    model.train()
    batches = iter(loader)
    durations = []
    for index in range(warmup_steps + steps):
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:  # a probe longer than an epoch: start the next one
            batches = iter(loader)
            batch = next(batches)
        loss, _ = task.loss(model, batch)
        loss.backward()
        if config.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup_steps:
            durations.append(time.perf_counter() - start)
    return statistics.median(durations)
