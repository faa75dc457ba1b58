"""`train.compile: true` against eager on the CPU, per task: step time medians, compile time, ratio.

The models of the CPU recipes (fashion_mnist_cpu, fashion_scenes_cpu, mri_lobes_cpu) on generated
batches of their sizes, through the loop's own `train_step` (benchmarks/step_cases.py). Eager and
compiled copies (same seed) take their steps interleaved, one each in turn, so a noisy shared
machine slows both alike; medians are reported. The compile time is the compiled copy's warm-up
(its first steps, one per batch shape) minus the eager copy's.

    python benchmarks/compile_cpu.py --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cases import CPU_CASES, build_task, make_batches, prepare_step, reset_accelerate_state  # noqa: E402


def _prepared(case, compile: bool):
    reset_accelerate_state()
    torch.manual_seed(0)
    task = build_task(case, f"train.compile={str(compile).lower()}", "train.output_dir=runs/compile_cpu")
    return task, prepare_step(task)


def measure(case, steps: int, shapes: int) -> dict[str, float]:
    task, eager = _prepared(case, False)
    _, compiled = _prepared(case, True)
    batches = make_batches(task, case, shapes, seed=1)
    warm = {}
    for name, prepared in (("eager", eager), ("compiled", compiled)):
        start = time.perf_counter()
        for batch in batches:  # every batch shape once: compiled graphs for all of them
            prepared.step(batch)
        warm[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for index in range(steps):
        batch = batches[index % len(batches)]
        for name, prepared in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            prepared.step(batch)
            times[name].append(time.perf_counter() - start)
    eager_ms, compiled_ms = (statistics.median(times[name]) * 1e3 for name in ("eager", "compiled"))
    return {"eager_ms": eager_ms, "compiled_ms": compiled_ms, "ratio": eager_ms / compiled_ms,
            "compile_s": warm["compiled"] - warm["eager"], "mixed_precision": eager.accelerator.mixed_precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each copy")
    parser.add_argument("--shapes", type=int, default=4, help="distinct batches (detection: image sizes) cycled")
    parser.add_argument("--cases", default=None, help="comma-separated substrings of the case names")
    args = parser.parse_args()
    cases = CPU_CASES
    if args.cases:
        cases = tuple(case for case in cases if any(part in case.name for part in args.cases.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} interleaved steps each")
    print(f"{'case':<42} {'precision':>9} {'eager ms':>9} {'compiled ms':>11} {'eager/compiled':>14} {'compile s':>9}")
    for case in cases:
        row = measure(case, args.steps, args.shapes)
        print(f"{case.name:<42} {row['mixed_precision']:>9} {row['eager_ms']:>9.1f} {row['compiled_ms']:>11.1f} "
              f"{row['ratio']:>14.2f} {row['compile_s']:>9.1f}")


if __name__ == "__main__":
    main()
