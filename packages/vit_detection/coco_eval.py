"""COCO box evaluation with pycocotools, with its known pitfalls handled in one place.

Flow: the model's post-processed predictions (per image: scores (Q,), contiguous labels (Q,),
absolute xyxy boxes (Q, 4) in original-image pixels) -> `predictions_to_coco_results` (COCO's
submission format: xywh boxes, the data set's own category ids, no score threshold) ->
`CocoResultCollector` (gathers them from every process with Accelerate, one entry per image, and
drops duplicates by image id) -> `evaluate_coco` (the 12 COCOeval numbers) -> `summary_text`.

The pycocotools pitfalls (cocoapi: coco.py, cocoeval.py) and what this module does about them:

1. COCOeval defaults to ``iouType="segm"``: "bbox" is passed.
2. ``loadRes([])`` crashes: an empty result list is evaluated against an empty detection set
   (every metric with ground truth is 0; as always, -1 where no ground truth exists).
3. ``loadRes`` mutates the result dicts: it gets copies.
4. A missing ``iscrowd`` raises KeyError and ``area`` decides small/medium/large:
   `ground_truth_coco` fills both in (iscrowd 0, area w * h) where a file lacks them.
5. Annotation id 0 is silently never matched (matches are stored as ids, 0 meaning none):
   `ground_truth_coco` renumbers ids 1..N when any is < 1, and `evaluate_coco` refuses ground
   truth that still has one.
6. Only the top ``maxDets[-1]`` (100) detections per image count: ``params.maxDets`` becomes
   ``[1, 10, 100, max_dets]`` (sorted) with `max_dets` at least the number of queries; the 12
   standard numbers stay at 100 and those at `max_dets` are added under labelled keys
   (``AP@maxDets300``), so results stay comparable with published COCO numbers.
7. ``category_id`` must be the data set's own ids (COCO's run 1..90 with gaps): results map
   contiguous labels through the data set's ``label_to_category_id``; unknown ids are an error
   (COCOeval would ignore them silently).
8. Classes without ground truth give -1 and are left out of the means (pycocotools' rule, kept).
9. No score threshold anywhere here: AP is a ranking metric.

``COCOeval.summarize()`` reads AP at ``maxDets=100`` by value but AR at ``maxDets[-1]`` by index,
and knows only three maxDets; `evaluate_coco` therefore reduces ``eval["precision"]``/``["recall"]``
itself with the same arithmetic (mean over entries > -1) at the index of each count: the 12
standard numbers equal ``COCOeval.stats`` of a maxDets ``[1, 10, 100]`` evaluation exactly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "CocoResultCollector",
    "coco_from_dict",
    "evaluate_coco",
    "ground_truth_coco",
    "predictions_to_coco_results",
    "raised_stat_names",
    "stat_names",
    "summary_text",
    "write_coco_results",
]

CocoResult = dict[str, Any]


# ------------------------------------------------------------------------------------ ground truth
def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object from an in-memory dictionary (without its "creating index" print)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def ground_truth_coco(data: dict[str, Any]) -> COCO:
    """A COCO ground truth fit for COCOeval, from a COCO detection dictionary.

    The annotations are copied, then: ``iscrowd`` defaults to 0 and ``area`` to the box's
    ``w * h`` where missing; when any annotation id is < 1 (COCOeval cannot match id 0) or ids
    repeat, all are renumbered 1..N in file order. Images and categories are kept as they are.

    Args:
        data: ``{"images": [...], "annotations": [...], "categories": [...]}`` (not modified).
    """
    annotations = [dict(annotation) for annotation in data.get("annotations", [])]
    for annotation in annotations:
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = float(annotation["bbox"][2]) * float(annotation["bbox"][3])
    ids = [annotation.get("id") for annotation in annotations]
    if any(not isinstance(i, int) or i < 1 for i in ids) or len(set(ids)) != len(ids):
        for new_id, annotation in enumerate(annotations, start=1):
            annotation["id"] = new_id
    return coco_from_dict({**data, "annotations": annotations})


# ------------------------------------------------------------------------------------ results
def predictions_to_coco_results(
    image_ids: Sequence[int],
    predictions: Sequence[Mapping[str, torch.Tensor]],
    label_to_category_id: Sequence[int] | Mapping[int, int],
) -> list[CocoResult]:
    """Post-processed predictions -> COCO results (the submission format), every prediction kept.

    Args:
        image_ids: the COCO image id of each prediction dict.
        predictions: per image ``{"scores": (Q,), "labels": (Q,) int contiguous, "boxes": (Q, 4)
            absolute (x0, y0, x1, y1) in original-image pixels}`` (the model's PostProcess output).
        label_to_category_id: the data set's category id of each label (`CocoDetection.label_to_category_id`).

    Returns:
        ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h] floats, "score": float}, ...]``
        in image order, then query order. Predictions with a non-finite score or box are
        dropped with a warning (COCOeval cannot rank them).
    """
    if len(image_ids) != len(predictions):
        raise ValueError(f"got {len(image_ids)} image ids but {len(predictions)} prediction dicts")
    results: list[CocoResult] = []
    dropped = 0
    for image_id, prediction in zip(image_ids, predictions, strict=True):
        for key in ("scores", "labels", "boxes"):
            if key not in prediction:
                raise ValueError(f"prediction for image {image_id} has no '{key}' (keys: {sorted(prediction)})")
        scores = prediction["scores"].detach().float().cpu().reshape(-1)
        labels = prediction["labels"].detach().cpu().reshape(-1).long()
        boxes = prediction["boxes"].detach().float().cpu().reshape(-1, 4)
        if not len(scores) == len(labels) == len(boxes):
            raise ValueError(
                f"prediction for image {image_id}: {len(scores)} scores, {len(labels)} labels, {len(boxes)} boxes"
            )
        finite = torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
        dropped += int((~finite).sum())
        xywh = box_convert(boxes[finite], in_fmt="xyxy", out_fmt="xywh").tolist()
        for label, box, score in zip(labels[finite].tolist(), xywh, scores[finite].tolist(), strict=True):
            try:
                category_id = int(label_to_category_id[label])
            except (IndexError, KeyError):
                raise ValueError(
                    f"prediction for image {image_id} has label {label}, which label_to_category_id does not map"
                ) from None
            results.append({"image_id": int(image_id), "category_id": category_id, "bbox": box, "score": score})
    if dropped:
        warnings.warn(f"dropped {dropped} predictions with a non-finite score or box", stacklevel=2)
    return results


def write_coco_results(path: str | os.PathLike, results: Sequence[CocoResult]) -> Path:
    """Write results as a COCO submission JSON (a list of result dicts), atomically (temp file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(list(results)))
    os.replace(temporary, path)
    return path


class CocoResultCollector:
    """COCO results of an evaluation run, gathered from every process, one entry per image.

    Call `update` once per batch on every process, with one entry per image of the batch; with an
    accelerator the entries are gathered through ``gather_for_metrics(use_gather_object=True)``,
    which drops the samples Accelerate repeats to fill the last batch of a sharded loader. Entries
    are then kept by image id, first one wins, so anything still repeated (a loader with
    ``even_batches`` padding, a sampler that repeats) counts once. Every process ends up holding
    all results.
    """

    def __init__(self) -> None:
        self._by_image: dict[int, list[CocoResult]] = {}

    def update(
        self,
        image_ids: Sequence[int],
        results_per_image: Sequence[Sequence[CocoResult]],
        accelerator: Accelerator | None = None,
    ) -> None:
        """
        Args:
            image_ids: the batch's COCO image ids (one per image, the batch order).
            results_per_image: the COCO results of each of those images (possibly empty lists).
            accelerator: gather from all processes (must be called on every process); None: this
                process only.
        """
        if len(image_ids) != len(results_per_image):
            raise ValueError(f"got {len(image_ids)} image ids but {len(results_per_image)} result lists")
        entries = [(int(i), list(r)) for i, r in zip(image_ids, results_per_image, strict=True)]
        if accelerator is not None:
            entries = accelerator.gather_for_metrics(entries, use_gather_object=True)
        for image_id, results in entries:
            self._by_image.setdefault(int(image_id), results)

    @property
    def image_ids(self) -> list[int]:
        """The distinct image ids seen, sorted."""
        return sorted(self._by_image)

    @property
    def results(self) -> list[CocoResult]:
        """All results, image by image in id order."""
        return [result for image_id in self.image_ids for result in self._by_image[image_id]]

    def __len__(self) -> int:
        return len(self._by_image)


# ------------------------------------------------------------------------------------ evaluation
STANDARD_MAX_DETS = 100  # COCO's published numbers count the top 100 detections per image


def stat_names(max_dets: int = STANDARD_MAX_DETS) -> list[str]:
    """The names of the 12 COCOeval box numbers, in COCOeval's order.

    AP (IoU .50:.95), AP50, AP75, APs, APm, APl (all at `max_dets` detections per image), then
    average recall AR1, AR10, AR<max_dets> and ARs, ARm, ARl (at `max_dets`). `evaluate_coco`
    reports these at 100 always.
    """
    return ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}", "ARs", "ARm", "ARl"]


def raised_stat_names(max_dets: int) -> list[str]:
    """The labelled names of the 10 numbers that depend on the largest maxDets, at `max_dets`.

    ``AP@maxDets300``, ``AP50@maxDets300``, ... ``APl@maxDets300``, ``AR@maxDets300``,
    ``ARs@maxDets300``, ``ARm@maxDets300``, ``ARl@maxDets300`` (AR1 and AR10 do not change).
    """
    return [f"{name}@maxDets{max_dets}" for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR", "ARs", "ARm", "ARl")]


# (is AP, IoU threshold or None for .50:.95, area range label, maxDets count or None for "the main one")
_STAT_SPECS: tuple[tuple[bool, float | None, str, int | None], ...] = (
    (True, None, "all", None), (True, 0.5, "all", None), (True, 0.75, "all", None),
    (True, None, "small", None), (True, None, "medium", None), (True, None, "large", None),
    (False, None, "all", 1), (False, None, "all", 10), (False, None, "all", None),
    (False, None, "small", None), (False, None, "medium", None), (False, None, "large", None),
)  # fmt: skip
_RAISED_SPECS = tuple(spec for spec in _STAT_SPECS if spec[3] is None)  # the 10 that depend on the main count


def _reduce(evaluator: COCOeval, max_dets: int,
            specs: Sequence[tuple[bool, float | None, str, int | None]] = _STAT_SPECS) -> list[float]:
    """COCOeval.summarize's numbers with `max_dets` as the main count, read by maxDets *index*."""
    params = evaluator.params
    numbers = []
    for is_ap, iou, area, count in specs:
        area_index = params.areaRngLbl.index(area)
        det_index = list(params.maxDets).index(max_dets if count is None else count)
        # precision: [T IoUs, R recall points, K classes, A areas, M maxDets]; recall: [T, K, A, M]
        values = evaluator.eval["precision" if is_ap else "recall"]
        if iou is not None:
            values = values[np.where(iou == params.iouThrs)[0]]
        values = values[..., area_index, det_index]
        numbers.append(float(np.mean(values[values > -1])) if (values > -1).any() else -1.0)
    return numbers


def evaluate_coco(
    coco_gt: COCO,
    results: Sequence[CocoResult],
    max_dets: int = STANDARD_MAX_DETS,
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """The 12 standard COCOeval box numbers of `results` against `coco_gt`, and those at `max_dets`.

    Args:
        coco_gt: the ground truth, e.g. `CocoDetection.coco_gt` or `ground_truth_coco(...)`;
            annotation ids must be >= 1.
        results: COCO results (`predictions_to_coco_results`), every prediction, unthresholded;
            not modified. May be empty.
        max_dets: detections per image that count besides the standard 100; use at least the
            model's number of queries. At least 10 (COCOeval also reports AR1 and AR10).
        image_ids: evaluate on these images only (e.g. the subset that was predicted); None for
            every ground-truth image (images without results then count their objects as missed).

    Returns:
        ``{name: value}`` for `stat_names()` (the standard numbers at 100 detections per image),
        then, when `max_dets` is not 100, for `raised_stat_names(max_dets)` (the same numbers at
        `max_dets`): AP/AR in [0, 1], or -1 where the ground truth has nothing to measure (e.g.
        APl without large objects), as pycocotools reports.

    Raises:
        ValueError: max_dets < 10; a ground-truth annotation id < 1; a result whose image or
            category id the ground truth does not have.
    """
    if max_dets < 10:
        raise ValueError(f"max_dets must be >= 10 (COCOeval reports AR1 and AR10 too), got {max_dets}")
    bad_ids = [a["id"] for a in coco_gt.dataset.get("annotations", []) if a["id"] < 1]
    if bad_ids:
        raise ValueError(
            f"ground truth has annotation ids < 1 (e.g. {bad_ids[0]}), which COCOeval never matches; "
            f"build it with ground_truth_coco()"
        )
    known_images = set(coco_gt.getImgIds())
    known_categories = set(coco_gt.getCatIds())
    for result in results:
        if result["image_id"] not in known_images:
            raise ValueError(f"result for image id {result['image_id']}, which the ground truth does not have")
        if result["category_id"] not in known_categories:
            raise ValueError(
                f"result with category_id {result['category_id']}, not one of the ground truth's "
                f"{sorted(known_categories)} (map labels with label_to_category_id)"
            )
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes([copy.deepcopy(dict(r)) for r in results])
        else:
            # loadRes([]) crashes (it reads anns[0]); an empty detection set evaluates fine.
            coco_dt = coco_from_dict({
                "images": list(coco_gt.dataset.get("images", [])),
                "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
                "annotations": [],
            })
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        # One evaluation serves both counts: evaluateImg keeps maxDets[-1] detections per image and
        # accumulate cuts each image's ranked list at every count.
        evaluator.params.maxDets = sorted({1, 10, STANDARD_MAX_DETS, int(max_dets)})
        if image_ids is not None:
            unknown = sorted(set(int(i) for i in image_ids) - known_images)
            if unknown:
                raise ValueError(f"image_ids holds {unknown[:5]}, not in the ground truth")
            evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
    stats = dict(zip(stat_names(), _reduce(evaluator, STANDARD_MAX_DETS), strict=True))
    if int(max_dets) != STANDARD_MAX_DETS:
        stats.update(zip(raised_stat_names(int(max_dets)), _reduce(evaluator, int(max_dets), _RAISED_SPECS),
                         strict=True))
    return stats


def summary_text(stats: Mapping[str, float]) -> str:
    """The numbers as COCOeval.summarize prints them, one per line: the 12 standard ones, then
    those at a raised maxDets (``maxDets=300``) when `stats` has them.

    Args:
        stats: the dict `evaluate_coco` returns.
    """
    names = list(stats)
    if names[:12] != stat_names():
        raise ValueError(f"expected the 12 keys of evaluate_coco first ({stat_names()}), got {names[:12]}")
    rows = [(name, spec, STANDARD_MAX_DETS) for name, spec in zip(names[:12], _STAT_SPECS, strict=True)]
    if len(names) > 12:
        match = re.fullmatch(r"AP@maxDets(\d+)", names[12])
        if match is None or names[12:] != raised_stat_names(int(match.group(1))):
            raise ValueError(f"expected the raised-maxDets keys of evaluate_coco after the 12, got {names[12:]}")
        rows += [(name, spec, int(match.group(1))) for name, spec in zip(names[12:], _RAISED_SPECS, strict=True)]
    lines = []
    for name, (is_ap, iou, area, count), main in rows:
        title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        value = float(stats[name])
        value_text = f"{value:0.3f}" if math.isfinite(value) else str(value)
        shown = main if count is None else count
        lines.append(f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={shown:>3d} ] = {value_text}")
    return "\n".join(lines)
