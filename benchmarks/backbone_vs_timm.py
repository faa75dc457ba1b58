"""Throughput of vit_backbone against timm's VisionTransformer, same config and weights.

Both models run in one process, interleaved (ours, timm, timm, ours, ...) so that machine
noise hits both alike; each figure is the median over repeats. Cases:

  (a) a CIFAR-size ViT-Ti: 32 px, patch 4, depth 6, width 192, 10 classes;
  (b) ViT-S/16 at 224, 1000 classes;

each in fp32 and in bf16 autocast, for inference and for a full training step
(zero_grad + forward + cross-entropy + backward + AdamW step). timm runs as it ships (its
attention uses F.scaled_dot_product_attention); ours runs with its defaults
(`attn_kernel="auto"`).

Usage:
    python benchmarks/backbone_vs_timm.py            # full run, a few minutes on 2 cores
    python benchmarks/backbone_vs_timm.py --quick    # fewer repeats, smaller batches
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vit_backbone import VisionTransformer  # noqa: E402
from vit_backbone.attention import cpu_has_native_bf16  # noqa: E402

TARGETS = {("train", "bf16"): 1.5, ("train", "fp32"): 1.0}


@dataclass
class Case:
    name: str
    config: dict
    img_size: int
    num_classes: int
    batch: int


def cases(quick: bool) -> list[Case]:
    cifar = {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3, "num_classes": 10}
    small = {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6, "num_classes": 1000}
    return [
        Case("ViT-Ti CIFAR 32px p4 d6", cifar, 32, 10, 64 if quick else 128),
        Case("ViT-S/16 224", small, 224, 1000, 8 if quick else 32),
    ]


def build_pair(case: Case) -> tuple[torch.nn.Module, torch.nn.Module]:
    reference = timm.models.vision_transformer.VisionTransformer(**case.config)
    ours = VisionTransformer(**case.config, weight_init="skip")
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def step_fn(model: torch.nn.Module, mode: str, precision: str, images: torch.Tensor, labels: torch.Tensor
            ) -> Callable[[], None]:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast:
                model(images)

        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return train


def measure(case: Case, mode: str, precision: str, repeats: int, warmup: int) -> tuple[float, float]:
    """Median images/s of (ours, timm) for one case, interleaving the two."""
    torch.manual_seed(0)
    ours, reference = build_pair(case)
    images = torch.randn(case.batch, 3, case.img_size, case.img_size)
    labels = torch.randint(0, case.num_classes, (case.batch,))
    steps = {"ours": step_fn(ours, mode, precision, images, labels),
             "timm": step_fn(reference, mode, precision, images, labels)}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {"ours": [], "timm": []}
    for repeat in range(repeats):
        order = ("ours", "timm") if repeat % 2 == 0 else ("timm", "ours")
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return (case.batch / statistics.median(times["ours"]), case.batch / statistics.median(times["timm"]))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches (about a minute)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per model (default 10, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated subset of fp32,bf16 (default: both where the CPU has native bf16, "
                             "else fp32 only: emulated bf16 is 10-20x slower than fp32 for both models)")
    parser.add_argument("--cases", default=None, help="comma-separated case indices to run, e.g. 0 (default: all)")
    args = parser.parse_args()
    native_bf16 = cpu_has_native_bf16()
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16"] if native_bf16 else ["fp32"])
    selected = cases(args.quick)
    if args.cases:
        selected = [selected[int(index)] for index in args.cases.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = 1 if args.quick else 3

    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.machine()} {os.cpu_count()} cores  "
          f"torch {torch.__version__}  timm {timm.__version__}  threads {torch.get_num_threads()}  "
          f"malloc tuned: {'MALLOC_MMAP_THRESHOLD_' in os.environ}")
    print(f"cpu {cpu_model()}  torch cpu capability {torch.backends.cpu.get_cpu_capability()}  "
          f"native bf16: {native_bf16}")
    if args.precisions is None and not native_bf16:
        print("bf16 rows skipped: this CPU has no native bf16 (pass --precisions fp32,bf16 to run them anyway)")
    print(f"median of {repeats} interleaved repeats after {warmup} warm-up; images/s (higher is better)\n")
    header = f"{'case':<26}{'precision':<10}{'mode':<7}{'batch':>6}{'ours':>10}{'timm':>10}{'ratio':>8}  target"
    print(header)
    print("-" * len(header))
    for case in selected:
        for precision in precisions:
            for mode in ("infer", "train"):
                ours, reference = measure(case, mode, precision, repeats, warmup)
                ratio = ours / reference
                target = TARGETS.get((mode, precision))
                if target is None:
                    verdict = ""
                elif precision == "bf16" and not native_bf16:
                    verdict = f">= {target:.1f}x n/a: bf16 is emulated on this CPU"
                else:
                    verdict = f">= {target:.1f}x {'met' if ratio >= target else 'MISSED'}"
                print(f"{case.name:<26}{precision:<10}{mode:<7}{case.batch:>6}{ours:>10.1f}{reference:>10.1f}"
                      f"{ratio:>7.2f}x  {verdict}", flush=True)


if __name__ == "__main__":
    main()
