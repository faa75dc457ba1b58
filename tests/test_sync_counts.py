"""Host-device synchronisations per training step, counted on the CPU for each task.

Every `.item()`, `.cpu()`, `.tolist()`, `bool()`, `float()`, `.numpy()` (and data-dependent shape:
`nonzero`, boolean masks) on a device tensor makes the host wait for the device, so a GPU idles
while Python queues the next kernels. `SyncCounter` (benchmarks/step_cases.py) counts them on the
loop's own `train_step` with each task's loss, on a step that does not log.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_cases import (  # noqa: E402
    SMOKE_CASES,
    SyncCounter,
    build_task,
    make_batches,
    prepare_step,
    reset_accelerate_state,
)

from vit_training.loop import read_scalars  # noqa: E402

CASES = {case.task: case for case in SMOKE_CASES}
# The non-finite guard reads the loss once per step; that is the whole budget of these two tasks.
GUARD = 1
# DETR: the guard and the matcher's one copy of all costs (and the boxes it checks) to the host;
# the token grids come from the collate's host sizes ("image_hw"), not from the device pad mask.
DETECTION_EXPECTED = {("item", "train_step"): 1, ("cpu", "match_layers"): 1}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def count_step_syncs(task_name: str, tmp_path: Path, *overrides: str) -> SyncCounter:
    case = CASES[task_name]
    task = build_task(case, "train.mixed_precision=no", f"train.output_dir={tmp_path}", *overrides)
    prepared = prepare_step(task)
    first, second = make_batches(task, case, 2)
    prepared.step(first)  # optimizer state and lazily built buffers exist from now on
    counter = SyncCounter()
    counter.mark(second, prepared.model)
    with counter:
        result = prepared.step(second)
    assert result.stepped and result.finite
    # The logged scalars stayed device tensors: nothing was read for them during the step.
    assert all(isinstance(value, torch.Tensor) for value in result.extras.values())
    return counter


def by_site(counter: SyncCounter) -> Counter:
    return Counter((name, caller.rsplit(" ", 1)[-1]) for name, caller in counter.events)


@pytest.mark.parametrize("task_name", ["classification", "segmentation"])
def test_classification_and_segmentation_steps_sync_once(task_name: str, tmp_path: Path) -> None:
    counter = count_step_syncs(task_name, tmp_path)
    assert counter.count <= GUARD, counter.events
    assert by_site(counter) == Counter({("item", "train_step"): 1})


def test_classification_step_with_ema_and_clipping_still_syncs_once(tmp_path: Path) -> None:
    counter = count_step_syncs("classification", tmp_path, "train.ema_decay=0.99", "train.clip_grad_norm=1.0")
    assert counter.count <= GUARD, counter.events


def test_detection_step_copies_to_the_host_once_for_matching(tmp_path: Path) -> None:
    counter = count_step_syncs("detection", tmp_path)
    sites = by_site(counter)
    assert sites == Counter(DETECTION_EXPECTED), counter.events
    assert counter.count == GUARD + 1


def test_two_stage_detection_step_checks_its_cells_on_the_host(tmp_path: Path) -> None:
    """Two-stage query selection needs enough valid cells per image: counted from the host sizes, not the mask.

    The encoder proposals are matched in their own `match_layers` call (one host copy), beside the
    decoder layers' one.
    """
    counter = count_step_syncs("detection", tmp_path, "model.query_type=anchor", "model.two_stage=true")
    assert by_site(counter) == Counter({("item", "train_step"): 1, ("cpu", "match_layers"): 2}), counter.events


def test_detection_step_without_host_sizes_reads_the_pad_mask(tmp_path: Path) -> None:
    """A batch from another collate (no "image_hw") still trains: the grids are read from the mask."""
    case = CASES["detection"]
    task = build_task(case, "train.mixed_precision=no", f"train.output_dir={tmp_path}")
    prepared = prepare_step(task)
    first, second = make_batches(task, case, 2)
    prepared.step(first)
    images, pad_mask, targets = second
    stripped = (images, pad_mask, [{k: v for k, v in t.items() if k != "image_hw"} for t in targets])
    counter = SyncCounter()
    counter.mark(stripped, prepared.model)
    with counter:
        result = prepared.step(stripped)
    assert result.stepped and result.finite
    assert Counter(site for _, site in by_site(counter)).get("token_padding", 0) >= 1, counter.events


def test_the_counter_sees_reads_of_device_tensors_only() -> None:
    device_tensor = torch.ones(3)
    counter = SyncCounter()
    counter.mark(device_tensor)
    with counter:
        derived = device_tensor * 2
        float(derived.sum())
        bool(derived.all())
        derived.tolist()
        host = derived.cpu()
        host.numpy()
        bool(host.all())  # host copies cost nothing more
        torch.ones(2).sum().item()  # neither does a tensor made on the host
        made = torch.zeros(2, device=device_tensor.device)
        made.nonzero()
    assert [name for name, _ in counter.events] == ["__float__", "__bool__", "tolist", "cpu", "nonzero"]


def test_read_scalars_reads_tensors_and_numbers() -> None:
    values = {"acc": torch.tensor(0.5), "lr": 0.1, "loss": torch.tensor([2.0])}
    assert read_scalars(values) == {"acc": 0.5, "lr": 0.1, "loss": 2.0}
    with pytest.raises(ValueError, match="'x' must be a scalar"):
        read_scalars({"x": torch.ones(2)})
    counter = SyncCounter()
    counter.mark(values)
    with counter:
        read_scalars(values)
    assert counter.count == 1  # every tensor in one read
