"""Segmentation under a CPU budget: mean Dice and HD95 on the held-out MRI hemisphere over time.

Trains the demo recipe `configs/segmentation/mri_lobes_cpu.yaml` on the MRI-lobe data
(`python tasks/segment.py prepare`: the left hemisphere's 144 axial slices train, the right
hemisphere is the test volume) through the task's own code path (`SegmentationTask` +
`vit_training.loop.fit`: data loading, augmentation, evaluations and checkpoints all count in the
wall time), evaluating TransUNet's way every `--eval-every` epochs.

The issue asks for the result "after a fixed CPU budget" (`--minutes`, 20 by default). The cosine
schedule must know its length before the first step, so the number of epochs is planned from the
machine's own speed: a probe times `--probe-steps` optimizer steps of the recipe on real
augmented batches and one evaluation of the test volume, and the run gets the most epochs whose
training plus evaluations fill `SAFETY` (85%) of the budget. The probe (~15 s) is reported and not
counted in the budget. `--epochs N` skips the probe and trains N epochs.

It prints:

  * mean Dice / HD95 at every evaluation with the seconds since training started, in the
    `transunet` convention (HD95 in voxels, TransUNet's empty-mask rules) and the `standard` one
    (HD95 in mm at the volume's 1 mm spacing, MONAI's max of the two directed 95th percentiles);
  * the wall time at which mean Dice first reached `--target` (0.80 in the issue);
  * the last evaluation inside the budget, per lobe, in both conventions, and whether the
    target (mean Dice >= 0.80 over the 8 lobes within 20 minutes) is met.

The peer is the issue's target itself: the network is trained from scratch on one brain.
Threads: ``--threads 1`` by default, as every figure in the README was measured (the second core
served another job; two torch threads slow down badly while anything else loads the CPU).

Usage:
    python tasks/segment.py prepare --output data/mri_lobes     # once
    python benchmarks/segmentation.py                            # 20-minute budget
    python benchmarks/segmentation.py --minutes 5 --eval-every 0 # the demo's budget, one evaluation
    python benchmarks/segmentation.py --epochs 60                # a fixed length instead
    python benchmarks/segmentation.py --quick                    # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "segmentation" / "mri_lobes_cpu.yaml"
# Share of the budget the planned run fills: step times drifted by up to 15% within a run while the
# other core changed load (a 3-minute plan for 90% ended at 99.5%).
SAFETY = 0.85
WARMUP_STEPS = 2  # probe steps not timed (first-touch allocations, oneDNN kernel selection)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="the CPU budget: epochs are planned to fit it, the result is read inside it (default 20)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train exactly this many epochs instead of planning them from the budget")
    parser.add_argument("--eval-every", type=int, default=5,
                        help="evaluate every N epochs (default 5); 0 evaluates once, at the end")
    parser.add_argument("--target", type=float, default=0.80, help="mean Dice target (default 0.80)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--probe-steps", type=int, default=8, help="timed optimizer steps of the probe (default 8)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, one evaluation, no probe")
    parser.add_argument("--output", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides applied to the recipe, e.g. model.backbone.depth=4")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.eval_every < 0 or args.threads < 1 or args.probe_steps < 1:
        parser.error("--minutes must be > 0, --eval-every >= 0, --threads and --probe-steps >= 1")
    if args.epochs is not None and args.epochs < 2:
        parser.error("--epochs must be >= 2 (the recipe warms up for one epoch)")
    return args


def probe_costs(task: Any, steps: int) -> tuple[float, float]:
    """(seconds per optimizer step, seconds per evaluation of all test volumes) of the task's recipe.

    A throwaway model takes `steps` timed optimizer steps (after `WARMUP_STEPS` untimed ones) on
    real augmented batches, loading included (the median is taken), then predicts and scores the
    first evaluation volume the way `SegmentationTask.evaluate` does (scaled by the case count).
    `fit` reseeds everything when it starts, so the probe does not change the measured run.
    """
    import torch
    from budget_probe import median_step_seconds
    from torch.utils.data import DataLoader

    config = task.config
    model = task.build_model()
    train_set, eval_set = task.build_datasets()
    if eval_set is None or len(eval_set) == 0:
        raise ValueError(f"{CONFIG}: the recipe names no evaluation volume")
    loader = DataLoader(train_set, batch_size=config.train.batch_size, shuffle=True, drop_last=True,
                        collate_fn=task.collate_fn(True), generator=torch.Generator().manual_seed(0))
    step_s = median_step_seconds(task, model, loader, config, steps, WARMUP_STEPS)
    model.eval()
    start = time.perf_counter()
    task.case_record(model, eval_set[0])
    eval_s = (time.perf_counter() - start) * len(eval_set)
    return step_s, eval_s


def evaluations_in(epochs: int, eval_every: int) -> int:
    """How many evaluations `fit` runs in `epochs` epochs: every `eval_every`-th, and always the last."""
    if eval_every == 0:
        return 1
    return epochs // eval_every + (1 if epochs % eval_every else 0)


def plan_epochs(budget_s: float, epoch_s: float, eval_s: float, eval_every: int) -> int:
    """The most epochs (at least 2) whose training and evaluations take at most `budget_s` seconds."""
    epochs = 2
    while (epochs + 1) * epoch_s + evaluations_in(epochs + 1, eval_every) * eval_s <= budget_s:
        epochs += 1
    return epochs


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def print_evaluations(evals: list[dict[str, Any]]) -> None:
    print(f"\n{'epoch':>5} {'time':>9}   {'Dice':>6} {'HD95 vox':>9}   {'Dice std':>8} {'HD95 mm':>8}")
    for row in evals:
        print(f"{row['epoch'] + 1:>5} {row['time_s'] / 60:>5.2f} min   {row['mean_dice']:>6.4f} "
              f"{row['mean_hd95']:>9.2f}   {_number(row.get('standard/mean_dice'), 4):>8} "
              f"{_number(row.get('standard/mean_hd95'), 2):>8}")


def print_lobes(row: dict[str, Any]) -> None:
    names = [key.split("/", 1)[1] for key in row if key.startswith("dice/")]
    print(f"{'lobe':<12} {'Dice':>6} {'HD95 vox':>9}   {'Dice std':>8} {'HD95 mm':>8}")
    for name in [*names, None]:
        prefix = "mean_" if name is None else ""
        suffix = "" if name is None else f"/{name}"
        dice, hd95 = f"{prefix}dice{suffix}", f"{prefix}hd95{suffix}"
        print(f"{name or 'mean':<12} {row[dice]:>6.4f} {row[hd95]:>9.2f}   "
              f"{_number(row.get(f'standard/{dice}'), 4):>8} {_number(row.get(f'standard/{hd95}'), 2):>8}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from vit_segmentation.config import SegmentationConfig
    from vit_segmentation.task import SegmentationTask
    from vit_training.config import load_config
    from vit_training.loop import fit

    every = 0 if args.quick else args.eval_every
    output = args.output or Path(tempfile.mkdtemp(prefix="segmentation_bench_"))
    base = [f"train.eval_every_epochs={every}", "eval.overlay_slices=0", f"train.output_dir={output}",
            *args.overrides]
    budget_s = args.minutes * 60
    print(f"segmentation benchmark {time.strftime('%Y-%m-%d %H:%M')}: torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), cpu {torch.backends.cpu.get_cpu_capability()}, "
          f"{CONFIG.relative_to(ROOT)} {' '.join(args.overrides)}".rstrip())

    if args.quick or args.epochs is not None:
        epochs = 2 if args.quick else args.epochs
    else:
        task = SegmentationTask(load_config(SegmentationConfig, CONFIG, base))
        start = time.perf_counter()
        step_s, eval_s = probe_costs(task, args.probe_steps)
        probe_s = time.perf_counter() - start
        steps_per_epoch = len(task.build_train_dataset()) // task.config.train.batch_size
        epoch_s = step_s * steps_per_epoch
        epochs = plan_epochs(SAFETY * budget_s, epoch_s, eval_s, every)
        print(f"probe ({probe_s:.0f} s): {step_s:.3f} s per step of {task.config.train.batch_size} slices, "
              f"{steps_per_epoch} steps = {epoch_s:.1f} s per epoch, {eval_s:.1f} s per evaluation -> "
              f"{epochs} epochs and {evaluations_in(epochs, every)} evaluations planned for "
              f"{SAFETY:.0%} of {args.minutes:g} min")

    config = load_config(SegmentationConfig, CONFIG, [f"train.epochs={epochs}", *base])
    task = SegmentationTask(config)
    print(f"training {epochs} epochs, evaluation {'every ' + str(every) + ' epochs' if every else 'at the end'}, "
          f"input {list(config.data.input_size)}, depth {config.model.backbone.depth}, batch {config.train.batch_size}, "
          f"lr {config.optim.lr:g}; run folder {output}", flush=True)
    start = time.perf_counter()
    fit(task, task.config)
    wall = time.perf_counter() - start

    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [row for row in rows if row.get("split") == "eval"]
    print_evaluations(evals)
    print(f"\nwall time of training (fit: model, data, {epochs} epochs, {len(evals)} evaluation(s), checkpoints): "
          f"{wall:.0f} s ({wall / 60:.2f} min)")
    reached = next((row for row in evals if row["mean_dice"] >= args.target), None)
    if reached is not None:
        print(f"mean Dice >= {args.target:g}: first at {reached['time_s']:.0f} s ({reached['time_s'] / 60:.2f} min), "
              f"evaluation after epoch {reached['epoch'] + 1}")
    else:
        print(f"mean Dice >= {args.target:g}: not reached")
    inside = [row for row in evals if row["time_s"] <= budget_s]
    if not inside:
        print(f"no evaluation finished within {args.minutes:g} min")
        return 1
    last = inside[-1]
    print(f"\nlast evaluation within {args.minutes:g} min: {last['time_s']:.0f} s, after epoch {last['epoch'] + 1} "
          "(transunet convention: HD95 in voxels; standard: HD95 in mm, empty masks left out)")
    print_lobes(last)
    met = last["mean_dice"] >= args.target
    print(f"target (mean Dice >= {args.target:g} within {args.minutes:g} min): {'met' if met else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
