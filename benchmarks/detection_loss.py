"""Time of vit_detection's matcher + set loss against a straightforward per-layer, per-image one.

The case is DETR's COCO setting: a batch of 16 images, 100 queries, 91 classes, about 8
target boxes per image, 6 decoder layers (the last one + 5 auxiliary layers, each re-matched).

`SetCriterion` batches everything it can: one cost computation for all layers and images,
one transfer to the CPU, then scipy per (layer, image); the loss terms of all layers in one
pass. The reference below (written here, independent of the package) does what a first
implementation does: for each layer, for each image, build that image's cost matrix, solve
it, and accumulate the loss terms image by image. Both must give the same losses (asserted).

Usage:
    python benchmarks/detection_loss.py            # 30 interleaved repeats
    python benchmarks/detection_loss.py --quick    # 5 repeats
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from vit_detection.criterion import SetCriterion
from vit_detection.matcher import HungarianMatcher

BATCH, QUERIES, CLASSES, BOXES, LAYERS = 16, 100, 91, 8, 6
EOS_COEF = 0.1
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def make_case(seed: int = 0) -> tuple[dict, list[dict]]:
    """Random predictions for LAYERS decoder layers and targets with 4..12 boxes per image."""
    generator = torch.Generator().manual_seed(seed)

    def boxes(*shape: int) -> torch.Tensor:
        centres = torch.rand(*shape, 2, generator=generator)
        sizes = 0.02 + 0.4 * torch.rand(*shape, 2, generator=generator)
        return torch.cat([centres, sizes], dim=-1)

    layers = [
        {"pred_logits": torch.randn(BATCH, QUERIES, CLASSES + 1, generator=generator).requires_grad_(),
         "pred_boxes": boxes(BATCH, QUERIES).requires_grad_()}
        for _ in range(LAYERS)
    ]
    outputs = dict(layers[-1])
    outputs["aux_outputs"] = layers[:-1]
    counts = torch.randint(BOXES - 4, BOXES + 5, (BATCH,), generator=generator).tolist()
    targets = [{"labels": torch.randint(0, CLASSES, (n,), generator=generator), "boxes": boxes(n)} for n in counts]
    return outputs, targets


def reference_loss(outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, torch.Tensor]:
    """DETR's losses, one layer and one image at a time."""
    layers = list(outputs["aux_outputs"]) + [outputs]
    empty_weight = torch.ones(CLASSES + 1)
    empty_weight[-1] = EOS_COEF
    losses: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        suffix = "" if index == len(layers) - 1 else f"_{index}"
        ce_sum = torch.zeros(())
        weight_sum = torch.zeros(())
        l1_sum = torch.zeros(())
        giou_sum = torch.zeros(())
        for image, target in enumerate(targets):
            logits, boxes = layer["pred_logits"][image], layer["pred_boxes"][image]
            with torch.no_grad():
                prob = logits.softmax(-1)
                pred_xyxy = box_convert(boxes, "cxcywh", "xyxy")
                tgt_xyxy = box_convert(target["boxes"], "cxcywh", "xyxy")
                cost = (5.0 * torch.cdist(boxes, target["boxes"], p=1) - prob[:, target["labels"]]
                        - 2.0 * generalized_box_iou(pred_xyxy, tgt_xyxy))
                rows, cols = linear_sum_assignment(cost.numpy())
            rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
            classes = torch.full((QUERIES,), CLASSES, dtype=torch.int64)
            classes[rows] = target["labels"][cols]
            ce_sum = ce_sum + F.cross_entropy(logits, classes, weight=empty_weight, reduction="sum")
            weight_sum = weight_sum + empty_weight[classes].sum()
            l1_sum = l1_sum + (boxes[rows] - target["boxes"][cols]).abs().sum()
            matched_pred = box_convert(boxes[rows], "cxcywh", "xyxy")
            matched_tgt = box_convert(target["boxes"][cols], "cxcywh", "xyxy")
            giou_sum = giou_sum + (1 - torch.diag(generalized_box_iou(matched_pred, matched_tgt))).sum()
        losses[f"loss_ce{suffix}"] = ce_sum / weight_sum
        losses[f"loss_bbox{suffix}"] = l1_sum / num_boxes
        losses[f"loss_giou{suffix}"] = giou_sum / num_boxes
    return losses


def weighted_total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(value * WEIGHTS[key.rsplit("_", 1)[0] if key[-1].isdigit() else key]
               for key, value in losses.items() if key.startswith(("loss_ce", "loss_bbox", "loss_giou")))


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 30")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 30

    outputs, targets = make_case()
    num_boxes = float(sum(len(t["labels"]) for t in targets))
    criterion = SetCriterion(CLASSES, HungarianMatcher(), eos_coef=EOS_COEF)

    ours = criterion(outputs, targets, num_boxes)
    reference = reference_loss(outputs, targets, num_boxes)
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=f"{key} differs from the reference")
    torch.testing.assert_close(criterion.total(ours), weighted_total(reference), rtol=1e-5, atol=1e-5)

    def ours_forward() -> None:
        criterion(outputs, targets, num_boxes)

    def reference_forward() -> None:
        reference_loss(outputs, targets, num_boxes)

    def ours_backward() -> None:
        criterion.total(criterion(outputs, targets, num_boxes)).backward()

    def reference_backward() -> None:
        weighted_total(reference_loss(outputs, targets, num_boxes)).backward()

    results: dict[str, dict[str, list[float]]] = {"loss": {"ours": [], "ref": []}, "loss + backward": {"ours": [], "ref": []}}
    for fn in (ours_forward, reference_forward, ours_backward, reference_backward):
        fn()  # warm-up
    for repeat in range(repeats):
        # Interleaved, alternating order: machine noise hits both alike.
        pairs = [("ours", ours_forward, ours_backward), ("ref", reference_forward, reference_backward)]
        for name, forward, backward in pairs if repeat % 2 == 0 else pairs[::-1]:
            results["loss"][name].append(timed(forward))
            results["loss + backward"][name].append(timed(backward))

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"{repeats} repeats (median)")
    print(f"batch {BATCH}, {QUERIES} queries, {CLASSES} classes, {num_boxes / BATCH:.1f} boxes/image, "
          f"{LAYERS} decoder layers ({LAYERS - 1} aux); losses equal to the reference (asserted)")
    print(f"{'':18s}{'ours ms':>10s}{'reference ms':>14s}{'speed-up':>10s}")
    for case, timings in results.items():
        ours_ms, ref_ms = statistics.median(timings["ours"]), statistics.median(timings["ref"])
        print(f"{case:18s}{ours_ms:10.1f}{ref_ms:14.1f}{ref_ms / ours_ms:9.2f}x")


if __name__ == "__main__":
    main()
