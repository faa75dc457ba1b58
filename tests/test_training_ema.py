"""vit_training.ema.ModelEma: the weight average's arithmetic, its buffers and its checkpoint state."""

from __future__ import annotations

import torch
from torch import nn

from vit_training.ema import ModelEma


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_ema_follows_the_weights_by_the_decay_and_copies_integer_buffers() -> None:
    torch.manual_seed(0)
    model = small_net()
    ema = ModelEma(model, decay=0.9)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(5, 1, 8, 8)).square().mean().backward()  # also moves the BatchNorm statistics
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                expected[name] = 0.9 * expected[name] + 0.1 * tensor
            else:
                expected[name] = tensor.clone()
    averaged = ema.module.state_dict()
    assert averaged["1.num_batches_tracked"].item() == 3
    for name, tensor in expected.items():
        torch.testing.assert_close(averaged[name], tensor, msg=name)
    assert not any(parameter.requires_grad for parameter in ema.module.parameters())
    # The trained model is untouched by the average, and the state round-trips.
    assert not torch.equal(model.state_dict()["3.weight"], averaged["3.weight"])
    restored = ModelEma(small_net(), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    for name, tensor in restored.state_dict().items():
        assert torch.equal(tensor, averaged[name]), name
