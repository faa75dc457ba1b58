"""The GPU suite: the training step of each task's GPU recipe, measured through the loop's own `train_step`.

Cases (benchmarks/step_cases.py, random init, generated in-memory batches of the recipes' sizes):
classification ViT-B/16 at 224 (batch 128, the ImageNet fine-tune config), DETR ViT-B/16 at COCO
sizes (batch 2 and 8, coco_vit_b16.yaml), TransUNet R50-ViT-B/16 at 224 (batch 24, the Synapse
config); each eager and with `train.compile: true`. Per case: images/s, step time median and p10/p90
(warm-up steps excluded; compile time reported apart), model FLOPs per image (forward + backward,
`torch.utils.flop_counter.FlopCounterMode`), MFU against the chip's nominal dense bf16 peak and
against a bf16 matmul peak measured in the same run, peak memory, and host-device syncs per step
(`torch.cuda.set_sync_debug_mode("warn")` on CUDA; `SyncCounter` on the CPU).

    python benchmarks/gpu_suite.py --output gpu_suite.json                 # one GPU, <= 8 min
    accelerate launch --multi_gpu --num_processes 8 benchmarks/gpu_suite.py --output gpu_suite.json
    python benchmarks/gpu_suite.py --smoke --output smoke.json             # tiny models on the CPU (compiled: the first case)

Batches are staged on the device before timing (the loaders are measured by
benchmarks/loader_throughput.py). With several processes, images/s counts all of them and rank 0
prints and writes the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cases import (  # noqa: E402
    GPU_CASES,
    SMOKE_CASES,
    StepCase,
    SyncCounter,
    build_task,
    make_batches,
    prepare_step,
    reset_accelerate_state,
)

# Nominal dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity), matched
# against torch.cuda.get_device_name in this order (the first substring found wins).
NOMINAL_BF16_TFLOPS = (
    ("H200", 989.4), ("GH200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0),
    ("A10", 125.0), ("RTX 4090", 165.2), ("A6000", 154.8),
)


def nominal_peak_tflops(device_name: str) -> float | None:
    """The data sheet's dense bf16 peak of a GPU named `device_name`, None when not in the table."""
    for key, tflops in NOMINAL_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_matmul_tflops(device: torch.device, size: int, repeats: int) -> float:
    """bf16 matmul throughput of (size x size) @ (size x size), median of `repeats` timed products."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e12


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this case: allocated CUDA memory, or on a CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count_flops(prepared: Any, batch: Any) -> float:
    """FLOPs of one forward + backward of `batch` (the step's matmuls, convolutions and attention)."""
    with FlopCounterMode(display=False) as counter:
        prepared.step(batch)
    return float(counter.get_total_flops())


def _count_syncs(prepared: Any, batch: Any) -> float:
    """Host-device syncs of one (non-log) step: CUDA's sync debug warnings, or `SyncCounter` on a CPU."""
    device = prepared.accelerator.device
    if device.type == "cuda":
        synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                prepared.step(batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return float(sum("synchroniz" in str(warning.message) for warning in caught))
    counter = SyncCounter()
    counter.mark(batch, prepared.model)
    with counter:
        prepared.step(batch)
    return float(counter.count)


def run_case(case: StepCase, compile: bool, warmup: int, steps: int, smoke: bool) -> dict[str, Any]:
    """Time one case (eager or compiled) and return its row."""
    reset_accelerate_state()
    overrides = [f"train.compile={str(compile).lower()}", "train.output_dir=runs/gpu_suite"]
    if smoke:
        overrides.append("train.mixed_precision=no")
    task = build_task(case, *overrides)
    prepared = prepare_step(task)
    accelerator, device = prepared.accelerator, prepared.accelerator.device
    batches = [send_to_device(batch, device) for batch in make_batches(task, case, 4, seed=accelerator.process_index)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    prepared.step(batches[0])  # the compile happens here (and again per new shape, in warm-up)
    synchronize(device)
    first_step_s = time.perf_counter() - start
    for index in range(1, warmup):
        prepared.step(batches[index % len(batches)])
    synchronize(device)
    times = []
    for index in range(steps):
        start = time.perf_counter()
        result = prepared.step(batches[index % len(batches)])
        synchronize(device)
        times.append(time.perf_counter() - start)
    if not math.isfinite(result.loss):
        raise RuntimeError(f"{case.name}: the loss is {result.loss}")
    memory = _peak_memory_mib(device)
    # The CPU counter is a torch function mode, which the compiler would trace: eager rows only there.
    syncs = _count_syncs(prepared, batches[0]) if device.type == "cuda" or not compile else None
    flops = None if compile else _count_flops(prepared, batches[0]) / case.batch_size
    median = statistics.median(times)
    images_per_s = case.batch_size * accelerator.num_processes / median
    row = {
        "case": case.name, "compile": compile, "batch_size": case.batch_size, "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision, "images_per_s": images_per_s,
        "step_ms_median": median * 1e3, "step_ms_p10": _percentile(times, 0.1) * 1e3,
        "step_ms_p90": _percentile(times, 0.9) * 1e3, "first_step_s": first_step_s,
        "timed_steps": steps, "peak_memory_mib": memory, "syncs_per_step": syncs, "flops_per_image": flops,
    }
    del prepared, batches, task
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def add_mfu(rows: list[dict[str, Any]], peak: dict[str, float | None]) -> None:
    """MFU of each row: achieved model FLOP/s per process over the nominal and the measured peak."""
    flops = {row["case"]: row["flops_per_image"] for row in rows if row["flops_per_image"]}
    for row in rows:
        row["flops_per_image"] = flops.get(row["case"])
        achieved = (row["flops_per_image"] or 0.0) * row["images_per_s"] / row["processes"] / 1e12
        row["achieved_tflops"] = achieved
        for key in ("nominal", "measured"):
            row[f"mfu_{key}"] = achieved / peak[key] if peak.get(key) else None


def print_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    print(f"device: {meta['device']}; peak bf16 TFLOP/s nominal {meta['peak_tflops_nominal']}, "
          f"measured {meta['peak_tflops_measured']:.1f} (matmul {meta['matmul_size']}^3)")
    header = (f"{'case':<46} {'compile':>7} {'img/s':>9} {'step ms':>9} {'p10':>8} {'p90':>8} {'1st s':>7} "
              f"{'GFLOP/img':>10} {'MFU nom':>8} {'MFU meas':>8} {'mem MiB':>8} {'syncs':>5}")
    print(header)
    print("-" * len(header))

    def pct(value: float | None) -> str:
        return f"{100 * value:.1f}%" if value is not None else "-"

    for row in rows:
        print(f"{row['case']:<46} {str(row['compile']):>7} {row['images_per_s']:>9.1f} {row['step_ms_median']:>9.1f} "
              f"{row['step_ms_p10']:>8.1f} {row['step_ms_p90']:>8.1f} {row['first_step_s']:>7.1f} "
              f"{(row['flops_per_image'] or 0) / 1e9:>10.2f} {pct(row['mfu_nominal']):>8} {pct(row['mfu_measured']):>8} "
              f"{row['peak_memory_mib']:>8.0f} {row['syncs_per_step'] if row['syncs_per_step'] is not None else '-':>5}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("gpu_suite.json"), help="the JSON file of all rows")
    parser.add_argument("--smoke", action="store_true", help="tiny models, 2 timed steps: the same code on a CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default 5; smoke 1)")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--cases", default=None, help="comma-separated substrings of the case names to run")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cases = SMOKE_CASES if args.smoke else GPU_CASES
    if args.cases:
        wanted = [part.strip() for part in args.cases.split(",")]
        cases = tuple(case for case in cases if any(part in case.name for part in wanted))
    steps = args.steps or (2 if args.smoke else 20)
    warmup = args.warmup or (1 if args.smoke else 5)

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
        else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    matmul_size = 8192 if device.type == "cuda" else 256
    peak = {"nominal": nominal_peak_tflops(name) if device.type == "cuda" else None,
            "measured": measured_matmul_tflops(device, matmul_size, 10 if device.type == "cuda" else 3)}
    rows = []
    for number, case in enumerate(cases):
        # Smoke: compiling every tiny case takes minutes on a CPU; the first one runs the compiled path.
        compiled = (False,) if args.no_compile or (args.smoke and number > 0) else (False, True)
        for compile in compiled:
            rows.append(run_case(case, compile, warmup, steps, args.smoke))
    add_mfu(rows, peak)
    meta = {"device": name, "torch": torch.__version__, "peak_tflops_nominal": peak["nominal"],
            "peak_tflops_measured": peak["measured"], "matmul_size": matmul_size, "smoke": args.smoke,
            "warmup_steps": warmup}
    result = {"meta": meta, "rows": rows}
    if int(os.environ.get("RANK", "0")) == 0:
        print_table(rows, meta)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
