"""`train.compile: true` for each task: the loop's own step on tiny models, compiled, gives the eager
losses for the same weights and batches. Detection's changing image sizes still recompile per new set of
sizes (a strict xfail below says why), which bounds nothing but torch's recompile limit."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_cases import SMOKE_CASES, build_task, make_batches, prepare_step, reset_accelerate_state  # noqa: E402

CASES = {case.task: case for case in SMOKE_CASES}
# No randomness inside the step, so eager and compiled steps see the same numbers.
DETERMINISTIC = {
    "classification": ("model.backbone.drop_path_rate=0.0", "augment.mixup_prob=0.0", "augment.label_smoothing=0.0"),
    "detection": ("model.backbone.drop_path_rate=0.0", "model.dropout=0.0"),
    "segmentation": ("model.backbone.pos_drop_rate=0.0", "model.backbone.proj_drop_rate=0.0"),
}


@pytest.fixture(autouse=True)
def fresh_state():
    reset_accelerate_state()
    torch._dynamo.reset()
    yield
    reset_accelerate_state()
    torch._dynamo.reset()


def step_losses(task_name: str, tmp_path: Path, compile: bool, steps: int) -> list[float]:
    case = CASES[task_name]
    reset_accelerate_state()
    torch.manual_seed(0)
    task = build_task(case, "train.mixed_precision=no", f"train.output_dir={tmp_path}",
                      f"train.compile={str(compile).lower()}", *DETERMINISTIC[task_name])
    prepared = prepare_step(task)
    return [prepared.step(batch).loss for batch in make_batches(task, case, steps, seed=1)]


@pytest.mark.parametrize("task_name", ["classification", "segmentation", "detection"])
def test_compiled_steps_match_eager(task_name: str, tmp_path: Path) -> None:
    steps = 3 if task_name == "detection" else 2  # detection: three image sizes
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager = step_losses(task_name, tmp_path, False, steps)
    compiled = step_losses(task_name, tmp_path, True, steps)
    assert all(math.isfinite(loss) for loss in compiled)
    # The same weights and batches; after the first step, the same update too.
    assert compiled == pytest.approx(eager, rel=2e-3, abs=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames_before  # it did compile


def test_detection_recompiles_stop_once_the_shapes_are_dynamic(tmp_path: Path) -> None:
    """New image sizes stop compiling after the first change: the host grids become dynamic sizes.

    The collate's host sizes reach the model as Python ints; after one recompile torch treats them
    as symbolic, and the per-image position embedding (the one part that needs them as concrete
    sizes) runs eagerly (`VisionTransformer._per_image_position_embedding`).
    """
    case = CASES["detection"]
    task = build_task(case, "train.mixed_precision=no", f"train.output_dir={tmp_path}", "train.compile=true",
                      *DETERMINISTIC["detection"])
    prepared = prepare_step(task)
    counts = []
    for batch in make_batches(task, case, 5, seed=1):
        prepared.step(batch)
        counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    # After a static and a dynamic version of each graph, new image sizes compile nothing more.
    assert counts[-1] == counts[2], counts
