"""Exponential moving average of model weights (Polyak averaging)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of a model whose weights follow the trained ones slowly.

    After every optimizer step: ema = decay * ema + (1 - decay) * weights for floating-point
    parameters and buffers; integer buffers (counters) are copied. Evaluating the average often
    beats the last weights, and it is cheap.

    It has `state_dict` / `load_state_dict`, so `Accelerator.register_for_checkpointing` saves and
    restores it with the rest of the training state.

    Args:
        model: the unwrapped model (not the DDP wrapper) to average.
        decay: weight of the old average per step, e.g. 0.9998.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (call after every optimizer step)."""
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
            torch._foreach_lerp_(averages, values, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)
