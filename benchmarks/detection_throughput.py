"""Detection training throughput, and the Hungarian matcher's share of the step time.

Trains a detection config for ``--steps`` optimizer steps through the task script's own code path
(`DetectionTask` + `vit_training.loop.fit`: data loading, forward, matching, set loss, backward,
clipping, AdamW, under the config's mixed precision) and prints:

  * images/s: the global batch (``train.batch_size`` x processes) over the median step time (a
    step here is one batch per process; with ``train.grad_accum_steps`` > 1 an optimizer step,
    which ``--steps`` counts, is several);
  * the step time (median and mean, ms) after ``--warmup`` untimed steps;
  * the matcher's share of the step: time inside `HungarianMatcher.match_layers` (the batched
    cost matrix on the device, its one copy to the host, then `linear_sum_assignment` per image
    and decoder layer), and the share of scipy's `linear_sum_assignment` alone;
  * peak device memory (CUDA), and one COCO evaluation at the end (``--eval-images`` val images;
    after a few hundred steps it shows that the evaluation path runs, not a trained detector).

How it times: a step runs from one call of the task's loss to the next. Every stamp is taken after
`torch.cuda.synchronize()` (no-op on a CPU), so the asynchronous backward and optimizer step of a
step are charged to that step, and the forward pass still in flight when the matcher is called is
charged to the forward, not to the matcher. The matcher waits for the device anyway (it copies the
cost matrix to the host), so these stamps add no wait that the step did not already have.

Launch it as a training run (one process per GPU; every process prints nothing, the first the table):

    accelerate launch --num_processes 1 --mixed_precision bf16 benchmarks/detection_throughput.py \\
        --config configs/detection/coco_vit_b16.yaml --scenes data/fashion_scenes --steps 300
    python benchmarks/detection_throughput.py --config configs/detection/fashion_scenes_cpu.yaml \\
        --steps 40 --warmup 5                                  # the CPU recipe on this machine

``--scenes DIR`` points a config (e.g. the COCO 2017 one) at the composed Fashion-MNIST scenes
written by ``python tasks/detect.py prepare scenes``; further ``key.sub=value`` overrides follow.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from accelerate.utils import broadcast_object_list  # noqa: E402

import vit_detection.matcher as matcher_module  # noqa: E402
from vit_detection.config import DetectionConfig, DetectionDataConfig  # noqa: E402
from vit_detection.task import DetectionTask  # noqa: E402
from vit_training import load_config  # noqa: E402
from vit_training.config import resolve_mixed_precision  # noqa: E402
from vit_training.loop import fit  # noqa: E402

# The composed scenes are written in the layout the data config defaults to (a COCO 2017 config
# names other folders): those defaults, as overrides.
SCENE_LAYOUT = [f"data.{name}={getattr(DetectionDataConfig(), name)}"
                for name in ("train_images", "train_annotations", "val_images", "val_annotations")]


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock:
    """Stamps of a training run: step starts, and seconds inside the matcher and inside scipy.

    `wrap_task` patches one `DetectionTask` instance (its `loss` and its criterion's matcher) and
    the `linear_sum_assignment` that `vit_detection.matcher` calls; nothing else changes.
    """

    def __init__(self) -> None:
        self.step_starts: list[float] = []
        self.matcher_s: list[float] = []  # per step: seconds inside match_layers (all its calls)
        self.assignment_s: list[float] = []  # per step: seconds inside linear_sum_assignment

    def _charge(self, bucket: list[float], seconds: float) -> None:
        if bucket:  # calls before the first step (none in `fit`) are not charged
            bucket[-1] += seconds

    def wrap_task(self, task: DetectionTask) -> None:
        task_loss = task.loss
        match_layers = task.criterion.matcher.match_layers
        assignment = matcher_module.linear_sum_assignment

        def timed_loss(model: torch.nn.Module, batch: Any) -> Any:
            _synchronize()
            self.step_starts.append(time.perf_counter())
            self.matcher_s.append(0.0)
            self.assignment_s.append(0.0)
            return task_loss(model, batch)

        def timed_match_layers(*args: Any, **kwargs: Any) -> Any:
            _synchronize()
            start = time.perf_counter()
            result = match_layers(*args, **kwargs)
            _synchronize()
            self._charge(self.matcher_s, time.perf_counter() - start)
            return result

        def timed_assignment(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = assignment(*args, **kwargs)
            self._charge(self.assignment_s, time.perf_counter() - start)
            return result

        task.loss = timed_loss  # type: ignore[method-assign]
        task.criterion.matcher.match_layers = timed_match_layers  # type: ignore[method-assign]
        matcher_module.linear_sum_assignment = timed_assignment  # type: ignore[assignment]

    def summary(self, warmup: int, images_per_batch: int) -> dict[str, float]:
        """Figures over the batches after the first `warmup` (the last has no end stamp and is left out).

        Args:
            warmup: untimed first batches.
            images_per_batch: images of one batch over all processes.
        """
        durations = [end - start for start, end in itertools.pairwise(self.step_starts)][warmup:]
        if len(durations) < 2:
            raise ValueError(f"{len(self.step_starts)} steps leave fewer than 2 timed steps after --warmup {warmup}")
        timed = slice(warmup, warmup + len(durations))
        step_total = sum(durations)
        median = statistics.median(durations)
        return {
            "timed_steps": len(durations),
            "images_per_batch": images_per_batch,
            "step_ms_median": 1000 * median,
            "step_ms_mean": 1000 * step_total / len(durations),
            "images_per_s": images_per_batch / median,
            "images_per_s_mean": images_per_batch * len(durations) / step_total,
            "matcher_ms_per_step": 1000 * sum(self.matcher_s[timed]) / len(durations),
            "matcher_share": sum(self.matcher_s[timed]) / step_total,
            "assignment_share": sum(self.assignment_s[timed]) / step_total,
        }


def build_config(config_file: Path, scenes: Path | None, steps: int, processes: int, eval_images: int,
                 output_dir: Path, overrides: list[str]) -> DetectionConfig:
    """`config_file` trained for exactly `steps` steps in one epoch, evaluated once at the end."""
    data = [f"data.root={scenes}", *SCENE_LAYOUT] if scenes else []
    base = load_config(DetectionConfig, config_file, [*data, *overrides])  # the batch size may be overridden
    images_per_step = base.train.batch_size * processes * base.train.grad_accum_steps
    defaults = ["train.log_every_steps=50", "eval.overlay_images=2"]
    # The sizing comes last: an override such as data.num_train_samples=null would otherwise turn
    # the `steps` steps into an epoch over the whole training set.
    sizing = [f"data.num_train_samples={steps * images_per_step}", f"data.num_eval_samples={eval_images}",
              "train.epochs=1", "train.eval_every_epochs=0", "train.save_every_steps=0",
              f"train.output_dir={output_dir}"]
    if base.schedule.warmup_steps >= steps:
        sizing.append(f"schedule.warmup_steps={steps // 4}")
    if base.schedule.name == "step":
        # Milestones of a long run (COCO's epoch 200) lie outside one short epoch; the lr's value
        # does not change what a step costs.
        sizing += ["schedule.name=constant", "schedule.milestone_epochs=[]", "schedule.milestone_steps=[]"]
    return load_config(DetectionConfig, config_file, [*data, *defaults, *overrides, *sizing])


def state_broadcast(value: str, state: PartialState) -> str:
    """`value` of process 0 on every process (the run folder must be one folder)."""
    if state.num_processes == 1:
        return value
    holder = [value]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a detection YAML config")
    parser.add_argument("--scenes", type=Path, default=None,
                        help="train and evaluate on this composed-scenes folder (tasks/detect.py prepare scenes)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed first steps (default 20)")
    parser.add_argument("--eval-images", type=int, default=100, help="val images of the final evaluation")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="keep the run (weights, checkpoints, logs) in this folder; default: a temporary "
                             "folder, deleted at the end")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_args()
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup} + 1")

    state = PartialState(cpu=not torch.cuda.is_available())  # as `fit`'s Accelerator will ask
    output_dir = args.output_dir
    if output_dir is None:
        folder = tempfile.mkdtemp(prefix="detection_throughput_") if state.is_main_process else ""
        output_dir = Path(state_broadcast(folder, state))
    config = build_config(args.config, args.scenes, args.steps, state.num_processes, args.eval_images, output_dir,
                          list(args.overrides))
    task = DetectionTask(config)
    clock = StepClock()
    clock.wrap_task(task)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fit(task, task.config)
    wall = time.perf_counter() - start

    # The clock stamps every batch (one loss call per process); with gradient accumulation an
    # optimizer step is grad_accum_steps of them.
    images_per_batch = config.train.batch_size * state.num_processes
    figures = clock.summary(args.warmup, images_per_batch)
    figures.update(batches=len(clock.step_starts), wall_s=wall, processes=state.num_processes,
                   AP=result.metrics.get("AP", float("nan")), AP50=result.metrics.get("AP50", float("nan")))
    if torch.cuda.is_available():
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if not state.is_main_process:
        return
    if args.output_dir is None:
        shutil.rmtree(output_dir, ignore_errors=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} thread(s)"
    model = config.model
    precision = resolve_mixed_precision(config.train.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    print(f"\ndetection throughput: {args.config.name} ({model.backbone.preset}, {model.neck} neck, "
          f"{model.enc_layers}+{model.dec_layers} layers, {model.num_queries} queries, {model.query_type} queries, "
          f"dn_groups {model.dn_groups}), train sizes {config.data.train_sizes[0]}..{config.data.train_sizes[-1]} "
          f"max {config.data.max_size}")
    print(f"  {device}, {state.num_processes} process(es) x batch {config.train.batch_size}, "
          f"mixed precision {precision}, torch {torch.__version__}")
    print(f"  {figures['batches']} batches in {wall:.0f} s (model build, data, evaluation included); "
          f"timed: {figures['timed_steps']} after {args.warmup}")
    print(f"  step {figures['step_ms_median']:.1f} ms median, {figures['step_ms_mean']:.1f} ms mean -> "
          f"{figures['images_per_s']:.1f} images/s ({figures['images_per_s_mean']:.1f} from the mean)")
    print(f"  matcher {figures['matcher_ms_per_step']:.2f} ms/step = {100 * figures['matcher_share']:.1f}% of the "
          f"step (linear_sum_assignment alone {100 * figures['assignment_share']:.1f}%)")
    if "peak_memory_gib" in figures:
        print(f"  peak memory {figures['peak_memory_gib']:.1f} GiB (process 0)")
    print(f"  final evaluation on {args.eval_images} val images: AP {figures['AP']:.3f}, AP50 {figures['AP50']:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"config": str(args.config), "device": device, **figures}, indent=1))


if __name__ == "__main__":
    main()
