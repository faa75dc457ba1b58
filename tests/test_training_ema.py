"""vit_training.ema.ModelEma: the weight average's arithmetic, its buffers and its checkpoint state."""

from __future__ import annotations

import pytest
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
    for name, tensor in restored.module.state_dict().items():
        assert torch.equal(tensor, averaged[name]), name
    assert restored.num_updates == 3


def test_warmed_up_decay_grows_with_the_updates_to_its_cap_and_resumes() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()  # float64: 1,000 updates of lerp and of the formula agree to 1e-7
    ema = ModelEma(model, decay=0.99, warmup=True)
    assert ModelEma(model, decay=0.99).current_decay() == 0.99  # no warm-up: the cap from the start
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    decays = []
    for step in range(1, 1001):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        decay = min(0.99, (1 + step) / (10 + step))
        decays.append(ema.current_decay())
        ema.update(model)
        for name, tensor in model.state_dict().items():
            expected[name] = decay * expected[name] + (1 - decay) * tensor
    # (1 + t) / (10 + t): 2/11 at the first update, 0.9 at t = 80, the cap 0.99 from t = 890 on.
    assert decays[0] == pytest.approx(2 / 11) and decays[79] == pytest.approx(0.9)
    assert decays[888] < 0.99 - 1e-6 and decays[889] == pytest.approx(0.99) and decays[-1] == 0.99
    for name, tensor in ema.module.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], msg=name)
    # The count travels with the checkpoint state, so a resumed run continues the same schedule.
    resumed = ModelEma(nn.Linear(3, 2).double(), decay=0.99, warmup=True)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.num_updates == 1000 and resumed.current_decay() == ema.current_decay()
    # A state written without the count (before it was kept) loads with the count at 0.
    legacy = ModelEma(nn.Linear(3, 2).double(), decay=0.99, warmup=True)
    legacy.load_state_dict(dict(ema.module.state_dict()))
    assert legacy.num_updates == 0


def test_decay_outside_the_open_unit_interval_is_refused() -> None:
    for decay in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="EMA decay must lie in"):
            ModelEma(nn.Linear(2, 2), decay=decay)


def test_initial_weight_share_and_the_warning_name_the_numbers() -> None:
    from vit_training.ema import ema_warning, initial_weight_share

    assert initial_weight_share(0.995, False, 124) == pytest.approx(0.995 ** 124)  # 54%: the demo's short run
    # Warmed up: 2/11 * 3/12 * 4/13 after three updates, then the cap.
    assert initial_weight_share(0.99, True, 3) == pytest.approx(2 / 11 * 3 / 12 * 4 / 13)
    # A cap below the rule's first decay (2/11): the cap throughout.
    assert initial_weight_share(0.15, True, 5) == pytest.approx(0.15 ** 5)
    line = ema_warning(0.995, False, 124)
    assert line is not None and "over 124 optimizer steps leaves 53.7%" in line and "train.ema_warmup=true" in line
    assert ema_warning(0.995, True, 124) is None and ema_warning(0.9, False, 100) is None
