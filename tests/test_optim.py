"""vit_training.optim and .schedule: AdamW/SGD groups, layer-wise lr decay, warmup + cosine/step/poly/constant."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from vit_backbone import VisionTransformer
from vit_training import (
    OptimizerConfig,
    ScheduleConfig,
    build_optimizer,
    build_scheduler,
    lr_factor_fn,
    param_groups,
)

DEPTH = 3
DECAY = 0.5

# The only parameters that should be decayed: the matrices of the patch embedding, attention, MLP and head.
MATRICES = {"patch_embed.proj.weight", "head.weight"} | {
    f"blocks.{i}.{name}.weight" for i in range(DEPTH) for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
}


def small_vit(num_classes: int = 10) -> VisionTransformer:
    # LayerScale (init_values) and a register token so every kind of exempt parameter is present.
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=DEPTH, num_heads=2,
        num_classes=num_classes, reg_tokens=1, init_values=1e-5,
    )


class Wrapped(nn.Module):
    """A task model as the task packages build them: a backbone plus a head of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = small_vit(num_classes=0)
        self.head = nn.Sequential(nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 4))


def by_name(groups: list[dict]) -> dict[str, dict]:
    return {name: group for group in groups for name in group["param_names"]}


def test_no_decay_for_vectors_embeddings_and_tokens() -> None:
    model = small_vit()
    groups = param_groups(model, weight_decay=0.05)
    decayed = {name for group in groups if group["weight_decay"] > 0 for name in group["param_names"]}
    assert decayed == MATRICES
    exempt = {name for group in groups if group["weight_decay"] == 0 for name in group["param_names"]}
    assert {"cls_token", "reg_token", "pos_embed", "norm.weight", "blocks.2.ls1.gamma", "head.bias"} <= exempt
    assert all(group["weight_decay"] == 0.05 for group in groups if group["weight_decay"] > 0)


def test_every_parameter_in_exactly_one_group() -> None:
    model = small_vit()
    groups = param_groups(model, weight_decay=0.05, layer_decay=DECAY)
    listed = [id(p) for group in groups for p in group["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())
    for group in groups:
        assert [id(p) for p in group["params"]] == [id(model.get_parameter(n)) for n in group["param_names"]]
    # One group per (decay, layer): layers 0..depth+1, each with decayed and exempt parameters.
    assert len(groups) == 2 * (DEPTH + 2)


def test_layer_ids_and_scales() -> None:
    groups = by_name(param_groups(small_vit(), weight_decay=0.05, layer_decay=DECAY))
    expected_layer = {"patch_embed.proj.weight": 0, "cls_token": 0, "reg_token": 0, "pos_embed": 0,
                      "blocks.0.attn.qkv.weight": 1, "blocks.2.norm2.bias": 3, "norm.weight": 4, "head.weight": 4}
    for name, layer_id in expected_layer.items():
        assert groups[name]["layer_id"] == layer_id, name
        assert groups[name]["lr_scale"] == pytest.approx(DECAY ** (DEPTH + 1 - layer_id)), name
    assert groups["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(DECAY ** (DEPTH + 1))
    assert groups["head.weight"]["lr_scale"] == 1.0


def test_without_layer_decay_everything_has_scale_one() -> None:
    groups = param_groups(small_vit(), weight_decay=0.05)
    assert len(groups) == 2
    assert all(group["lr_scale"] == 1.0 and group["layer_id"] is None for group in groups)


def test_wrapped_backbone_names_are_prefixed() -> None:
    model = Wrapped()
    groups = by_name(param_groups(model, weight_decay=0.05, layer_decay=DECAY))
    decayed = {name for name, group in groups.items() if group["weight_decay"] > 0}
    expected = {f"backbone.{name}" for name in MATRICES - {"head.weight"}} | {"head.0.weight", "head.2.weight"}
    assert decayed == expected
    for name in ("backbone.pos_embed", "backbone.cls_token", "backbone.reg_token"):
        assert groups[name]["weight_decay"] == 0 and groups[name]["layer_id"] == 0
    assert groups["backbone.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(DECAY ** (DEPTH + 1))
    assert groups["backbone.blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(DECAY ** (DEPTH - 1))
    for name in ("backbone.norm.weight", "head.0.weight", "head.2.bias"):
        assert groups[name]["layer_id"] == DEPTH + 1 and groups[name]["lr_scale"] == 1.0
    assert sum(len(g["params"]) for g in param_groups(model, 0.05, DECAY)) == len(list(model.parameters()))


def test_backbone_lr_scale_spares_the_task_head() -> None:
    groups = by_name(param_groups(Wrapped(), weight_decay=0.0, layer_decay=DECAY, backbone_lr_scale=0.1))
    assert groups["backbone.norm.weight"]["lr_scale"] == pytest.approx(0.1)
    assert groups["backbone.pos_embed"]["lr_scale"] == pytest.approx(0.1 * DECAY ** (DEPTH + 1))
    assert groups["head.0.weight"]["lr_scale"] == 1.0


def test_extra_exempt_names_and_frozen_parameters() -> None:
    model = Wrapped()
    model.backbone.patch_embed.requires_grad_(False)
    groups = by_name(param_groups(model, weight_decay=0.05, no_weight_decay_names=["head.0"]))
    assert not any(name.startswith("backbone.patch_embed") for name in groups)
    assert groups["head.0.weight"]["weight_decay"] == 0 and groups["head.2.weight"]["weight_decay"] == 0.05


def test_layer_decay_without_a_vit_is_an_error() -> None:
    mlp = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="layer_decay=0.75 needs a vit_backbone VisionTransformer.*Sequential"):
        param_groups(mlp, weight_decay=0.05, layer_decay=0.75)
    groups = by_name(param_groups(mlp, weight_decay=0.05))  # without layer decay any module works
    assert groups["0.weight"]["weight_decay"] == 0.05 and groups["0.bias"]["weight_decay"] == 0


def test_build_optimizer_sets_group_lrs() -> None:
    cfg = OptimizerConfig(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-6, layer_decay=DECAY)
    optimizer = build_optimizer(small_vit(), cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
        assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6
        assert group["weight_decay"] in (0.0, 0.1)



def test_build_optimizer_uses_the_fused_kernel_with_adamw_arithmetic() -> None:
    """The fused AdamW must take the same steps as torch's per-tensor AdamW on the same groups."""
    torch.manual_seed(0)
    model = small_vit()
    reference_model = copy.deepcopy(model)
    cfg = OptimizerConfig(lr=1e-3, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg)
    assert optimizer.defaults["fused"] is True
    reference = torch.optim.AdamW(
        [{**group, "params": [dict(reference_model.named_parameters())[n] for n in names]}
         for group, names in zip(optimizer.param_groups, _group_names(model, optimizer), strict=True)],
        lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False, fused=False,
    )
    images = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        for net, opt in ((model, optimizer), (reference_model, reference)):
            opt.zero_grad()
            net.forward_features(images).patch_tokens.square().mean().backward()
            opt.step()
    for (name, param), reference_param in zip(model.named_parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(param, reference_param, rtol=1e-5, atol=1e-6, msg=name)


def _group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The parameter names of each optimizer group, in order."""
    name_of = {id(param): name for name, param in model.named_parameters()}
    return [[name_of[id(param)] for param in group["params"]] for group in optimizer.param_groups]

# ----------------------------------------------------------------------------- schedules
def cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def two_group_optimizer(base_lr: float = 0.1, scale: float = 0.25) -> torch.optim.Optimizer:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    groups = [{"params": [a], "lr": base_lr, "lr_scale": 1.0}, {"params": [b], "lr": base_lr * scale, "lr_scale": scale}]
    return torch.optim.AdamW(groups, lr=base_lr)


def run_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """The lrs each optimizer step uses, for steps 0..steps (the last: after the run ends)."""
    lrs = []
    for _ in range(steps + 1):
        lrs.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_follows_the_closed_form_and_keeps_group_ratios() -> None:
    warmup, total, min_ratio = 10, 110, 0.1
    optimizer = two_group_optimizer()
    scheduler = build_scheduler(optimizer, ScheduleConfig(warmup_steps=warmup, min_lr_ratio=min_ratio), total, 11)
    lrs = run_schedule(scheduler, total)
    for step, (lr_a, lr_b) in enumerate(lrs):
        assert lr_a == pytest.approx(0.1 * cosine(step, warmup, total, min_ratio))
        assert lr_b / lr_a == pytest.approx(0.25)
    assert lrs[0][0] == pytest.approx(0.1 / (warmup + 1))  # starts near zero, not at zero
    assert lrs[warmup][0] == pytest.approx(0.1)  # warmup ends at the peak
    assert lrs[warmup + (total - warmup) // 2][0] == pytest.approx(0.1 * (min_ratio + (1 - min_ratio) / 2))
    assert lrs[total][0] == pytest.approx(0.1 * min_ratio)  # the end is min_lr_ratio


def test_warmup_epochs_and_step_milestones_in_epochs() -> None:
    cfg = ScheduleConfig(name="step", warmup_epochs=0.5, milestone_epochs=[2, 3], gamma=0.1)
    factor = lr_factor_fn(cfg, total_steps=40, steps_per_epoch=10)
    assert [factor(k) for k in (0, 4)] == pytest.approx([1 / 6, 5 / 6])
    assert [factor(k) for k in (5, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_and_step_milestones_in_steps() -> None:
    constant = lr_factor_fn(ScheduleConfig(name="constant", warmup_steps=3), 20, 5)
    assert [constant(k) for k in (0, 2, 3, 19)] == pytest.approx([0.25, 0.75, 1, 1])
    step = lr_factor_fn(ScheduleConfig(name="step", milestone_steps=[7], gamma=0.5), 20, 5)
    assert [step(k) for k in (0, 6, 7, 19)] == pytest.approx([1, 1, 0.5, 0.5])


def test_poly_follows_transunet_formula() -> None:
    # TransUNet: lr = base_lr * (1 - iter_num / max_iterations) ** 0.9 for the iteration about to run.
    poly = lr_factor_fn(ScheduleConfig(name="poly", power=0.9), 100, 10)
    assert [poly(k) for k in (0, 1, 50, 99)] == pytest.approx([(1 - k / 100) ** 0.9 for k in (0, 1, 50, 99)])
    warm = lr_factor_fn(ScheduleConfig(name="poly", power=2.0, warmup_steps=4), 24, 4)
    assert [warm(k) for k in (0, 3, 4, 14)] == pytest.approx([0.2, 0.8, 1.0, (1 - 10 / 20) ** 2])


def test_sgd_keeps_the_groups_and_momentum() -> None:
    model = small_vit()
    optimizer = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4))
    assert isinstance(optimizer, torch.optim.SGD)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert names == MATRICES
    assert all(g["momentum"] == 0.9 and g["lr"] == pytest.approx(0.01) for g in optimizer.param_groups)
    with pytest.raises(ValueError, match="nesterov=true needs momentum > 0"):
        OptimizerConfig(name="sgd", momentum=0.0, nesterov=True)


def test_resume_continues_the_schedule() -> None:
    cfg = ScheduleConfig(warmup_steps=5)
    first = build_scheduler(two_group_optimizer(), cfg, 50, 10)
    run_schedule(first, 19)
    second = build_scheduler(two_group_optimizer(), cfg, 50, 10)
    second.load_state_dict(first.state_dict())
    assert second.get_last_lr() == pytest.approx(first.get_last_lr())


@pytest.mark.parametrize(
    "cfg, match",
    [
        (ScheduleConfig(warmup_steps=100), "warmup_steps=100 is not shorter than the run"),
        (ScheduleConfig(warmup_epochs=10), r"warmup_epochs=10 \(100 steps\) is not shorter"),
        (ScheduleConfig(name="step", milestone_epochs=[12]), "milestone at optimizer step 120 lies outside"),
        (ScheduleConfig(name="step", warmup_steps=20, milestone_steps=[10]), "milestone at optimizer step 10"),
    ],
)
def test_schedule_errors(cfg: ScheduleConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_scheduler(two_group_optimizer(), cfg, total_steps=100, steps_per_epoch=10)


def test_adamw_kernel_is_a_function_of_the_device_type() -> None:
    from vit_training.optim import adamw_kernel

    assert adamw_kernel("cuda") == {"fused": True}
    assert adamw_kernel("cpu") == {"fused": True}  # measured faster than foreach on the CPU too
    assert adamw_kernel("xla") == {"foreach": True}  # no fused kernel there: multi-tensor ops
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    for device_type, expected in (("cpu", "fused"), ("cuda", "fused"), ("xla", "foreach")):
        optimizer = build_optimizer(model, OptimizerConfig(), device_type=device_type)
        assert optimizer.defaults[expected] is True
    sgd = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.1))
    assert sgd.defaults["foreach"] is True
