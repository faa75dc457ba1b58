"""Exponential moving average of model weights (Polyak averaging)."""

from __future__ import annotations

import copy

import torch
from torch import nn

# The update count's key in `ModelEma.state_dict`, beside the module's own keys (dotted attribute
# paths such as "blocks.0.attn.qkv.weight", which this name cannot collide with).
UPDATES_KEY = "_ema_num_updates"


# The share of the initial weights an average may still hold at the end of a run before `fit` warns.
INITIAL_SHARE_LIMIT = 0.01


def initial_weight_share(decay: float, warmup: bool, steps: int) -> float:
    """The weight of the initial (random) weights in the average after `steps` updates.

    Each update keeps `decay_t` of the old average, so the initial weights keep the product of
    the decays: ``decay ** steps`` for a fixed decay, prod_t min(decay, (1 + t) / (10 + t)) with
    `warmup` (see `ModelEma`).
    """
    if not warmup:
        return decay ** steps
    share = 1.0
    for step in range(1, steps + 1):
        rule = (1.0 + step) / (10.0 + step)
        if rule >= decay:  # the cap from here on
            return share * decay ** (steps - step + 1)
        share *= rule
        if share == 0.0:
            break
    return share


def _percent(share: float) -> str:
    return f"{share:.1%}" if share >= 0.001 else "< 0.1%"


def ema_warning(decay: float, warmup: bool, steps: int, limit: float = INITIAL_SHARE_LIMIT) -> str | None:
    """One line when an average over `steps` updates would still hold more than `limit` of the initial weights.

    The averaged model is the one evaluated and exported, so an average of mostly random weights
    scores near chance whatever the training did. None when the share is within `limit`.
    """
    share = initial_weight_share(decay, warmup, steps)
    if share <= limit:
        return None
    fixes = []
    if not warmup:
        fixes.append(f"train.ema_warmup=true (then {_percent(initial_weight_share(decay, True, steps))})")
    fixes.append(f"train.ema_decay <= {limit ** (1.0 / max(steps, 1)):.4g}")
    fixes.append("more steps, or train.ema_decay=null")
    rule = " with train.ema_warmup" if warmup else ""
    return (f"EMA: train.ema_decay={decay}{rule} over {steps} optimizer steps leaves {_percent(share)} of the "
            f"random initial weights in the averaged model that is evaluated and exported (more than "
            f"{limit:.0%}); set {', or '.join(fixes)}")


class ModelEma:
    """A frozen copy of a model whose weights follow the trained ones slowly.

    After every optimizer step: ema = decay * ema + (1 - decay) * weights for floating-point
    parameters and buffers; integer buffers (counters) are copied. Evaluating the average often
    beats the last weights, and it is cheap.

    With `warmup`, the decay of update t (counted from 1) is min(decay, (1 + t) / (10 + t)), the
    schedule of TensorFlow's `ExponentialMovingAverage(num_updates=...)`: the first averages forget
    the random initial weights within tens of steps, and the horizon 1 / (1 - decay) then grows
    with training (about t / 10 steps) up to the cap. A fixed decay of 0.998 still holds 14% of the
    initial weights after 1,000 steps; warmed up, the same cap is reached after about 4,500.

    It has `state_dict` / `load_state_dict`, so `Accelerator.register_for_checkpointing` saves and
    restores it (the averaged weights and, for the warm-up, the update count) with the rest of
    the training state.

    Args:
        model: the unwrapped model (not the DDP wrapper) to average.
        decay: weight of the old average per step, e.g. 0.9998 (the cap, with `warmup`).
        warmup: grow the decay with the number of updates (see above) instead of using it from
            the first step.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next `update` uses."""
        if not self.warmup:
            return self.decay
        step = self.num_updates + 1
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (call after every optimizer step)."""
        decay = self.current_decay()
        self.num_updates += 1
        current = model.state_dict()
        averages, values = [], []
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                averages.append(average)
                values.append(value.to(average.dtype))
            else:
                average.copy_(value)
        if averages:
            # One multi-tensor lerp (as timm's ModelEmaV3) instead of a Python loop of small ones.
            torch._foreach_lerp_(averages, values, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (the module's own names) plus the update count under `UPDATES_KEY`."""
        state = dict(self.module.state_dict())
        state[UPDATES_KEY] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict`; a state saved before the update count was kept starts it at 0."""
        weights = dict(state_dict)
        updates = weights.pop(UPDATES_KEY, None)
        self.module.load_state_dict(weights)
        self.num_updates = 0 if updates is None else int(updates)
