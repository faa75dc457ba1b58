"""COCO evaluation: our 12 numbers against pycocotools itself, the pitfalls it hides (id 0, empty
results, maxDets, category ids), two processes against one, and the overlay pictures.

This file is also the worker of the two-process test:
``accelerate launch ... tests/test_detection_eval.py worker GT_JSON OUT_PREFIX``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader, Dataset

from vit_detection.coco_eval import (
    CocoResultCollector,
    coco_from_dict,
    evaluate_coco,
    ground_truth_coco,
    predictions_to_coco_results,
    raised_stat_names,
    stat_names,
    summary_text,
    write_coco_results,
)
from vit_detection.visualize import denormalize, draw_detections, save_overlays, target_boxes_xyxy
from vit_training.cli import cpu_launch_command

ROOT = Path(__file__).resolve().parents[1]
CATEGORY_IDS = [1, 17, 90]  # COCO-like gaps; label i <-> CATEGORY_IDS[i]
NUM_QUERIES = 6


# ------------------------------------------------------------------------------------ data
def make_ground_truth(num_images: int = 7, seed: int = 0, first_annotation_id: int = 1) -> dict[str, Any]:
    """A COCO dict: small, medium and large boxes of three categories with id gaps, one crowd box,
    and one image without objects."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(160, 240)), int(rng.integers(120, 200))
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height})
        if image_id == 2:
            continue  # no objects: its detections are all false positives
        for _ in range(int(rng.integers(1, 5))):
            side = float(rng.choice([12.0, 24.0, 60.0, 110.0]))  # small, small, medium, large
            w, h = min(side, width - 1.0), min(side * float(rng.uniform(0.6, 1.0)), height - 1.0)
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            annotations.append({"id": first_annotation_id + len(annotations), "image_id": image_id,
                                "category_id": int(rng.choice(CATEGORY_IDS)), "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    annotations[-1]["iscrowd"] = 1
    categories = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def perfect_predictions(gt: dict[str, Any]) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Every non-crowd ground-truth box as a prediction (xyxy pixels, contiguous labels, score 1)."""
    image_ids, predictions = [], []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float64).reshape(-1, 4)
        labels = torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns], dtype=torch.int64)
        image_ids.append(image["id"])
        predictions.append({"scores": torch.ones(len(anns)), "labels": labels, "boxes": boxes})
    return image_ids, predictions


def noisy_prediction(gt: dict[str, Any], image_id: int) -> dict[str, torch.Tensor]:
    """NUM_QUERIES predictions for one image, seeded by its id: jittered ground truth (some with the
    wrong class) plus random false positives, scores spread so the ranking matters."""
    rng = np.random.default_rng(1000 + image_id)
    image = next(im for im in gt["images"] if im["id"] == image_id)
    anns = [a for a in gt["annotations"] if a["image_id"] == image_id][:NUM_QUERIES]
    boxes, labels, scores = [], [], []
    for annotation in anns:
        x, y, w, h = annotation["bbox"]
        jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
        boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
        label = CATEGORY_IDS.index(annotation["category_id"])
        labels.append(label if rng.random() > 0.15 else int(rng.integers(3)))
        scores.append(float(rng.uniform(0.3, 1.0)))
    while len(boxes) < NUM_QUERIES:
        x, y = rng.uniform(0, image["width"] - 30), rng.uniform(0, image["height"] - 30)
        side = rng.uniform(8, 60)
        boxes.append([x, y, x + side, y + side])
        labels.append(int(rng.integers(3)))
        scores.append(float(rng.uniform(0.0, 0.6)))
    return {"scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels),
            "boxes": torch.tensor(boxes, dtype=torch.float32)}


def noisy_results(gt: dict[str, Any]) -> list[dict[str, Any]]:
    ids = [im["id"] for im in gt["images"]]
    return predictions_to_coco_results(ids, [noisy_prediction(gt, i) for i in ids], CATEGORY_IDS)


def direct_cocoeval(gt: dict[str, Any], results: list[dict[str, Any]], max_dets: list[int] | None = None) -> COCOeval:
    """pycocotools used by the book, nothing of ours in between."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        if max_dets is not None:
            evaluator.params.maxDets = max_dets
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


# ------------------------------------------------------------------------------------ numbers
def test_ground_truth_fed_back_as_predictions_scores_one_through_the_category_gaps() -> None:
    gt = make_ground_truth()
    image_ids, predictions = perfect_predictions(gt)
    results = predictions_to_coco_results(image_ids, predictions, CATEGORY_IDS)
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    stats = evaluate_coco(ground_truth_coco(gt), results)
    assert list(stats) == stat_names(100)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert stats[name] == pytest.approx(1.0), name
    # contiguous labels passed as if they were category ids: caught, not silently ignored
    with pytest.raises(ValueError, match=r"category_id \d, not one of the ground truth's"):
        evaluate_coco(ground_truth_coco(gt), predictions_to_coco_results(image_ids, predictions, [0, 1, 2]))


def test_the_12_numbers_equal_a_direct_pycocotools_call() -> None:
    gt = make_ground_truth(num_images=9, seed=3)
    results = noisy_results(gt)
    ours = evaluate_coco(ground_truth_coco(gt), results, max_dets=100)
    reference = direct_cocoeval(gt, results)
    assert list(ours.values()) == [float(v) for v in reference.stats]  # exact, all 12
    assert 0.1 < ours["AP"] < 0.9  # a real, non-trivial case
    assert results == noisy_results(gt)  # loadRes got copies: our results are not mutated


def test_max_dets_above_100_reports_the_standard_numbers_and_labelled_raised_ones() -> None:
    # one image with 150 objects (a dense scene), every one predicted with a different score
    boxes = [[10.0 * (i % 15), 10.0 * (i // 15), 8.0, 8.0] for i in range(150)]
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 160, "height": 110}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 64.0, "iscrowd": 0}
                          for i, b in enumerate(boxes)],
          "categories": [{"id": 1, "name": "dot"}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - i / 1000} for i, b in enumerate(boxes)]
    at_100 = evaluate_coco(ground_truth_coco(gt), results, max_dets=100)
    at_150 = evaluate_coco(ground_truth_coco(gt), results, max_dets=150)
    assert list(at_100) == stat_names()
    assert list(at_150) == stat_names() + raised_stat_names(150)
    assert raised_stat_names(150)[0] == "AP@maxDets150" and "AR@maxDets150" in raised_stat_names(150)
    # the standard numbers do not move when max_dets is raised: they equal pycocotools' own at 100
    assert {k: at_150[k] for k in stat_names()} == at_100
    assert list(at_100.values()) == [float(v) for v in direct_cocoeval(gt, results).stats]
    assert at_100["AR100"] == pytest.approx(100 / 150) and at_100["AP"] < 1.0
    assert at_150["AR@maxDets150"] == pytest.approx(1.0) and at_150["AP@maxDets150"] == pytest.approx(1.0)
    # the raised numbers equal pycocotools' with maxDets [1, 10, 150] (whose summarize() reads AP at
    # maxDets == 100 by value, hence -1: why evaluate_coco reduces the arrays itself)
    reference = direct_cocoeval(gt, results, max_dets=[1, 10, 150])
    assert reference.stats[0] == -1
    raised = [at_150[k] for k in raised_stat_names(150)]
    assert raised[1:6] == [float(v) for v in reference.stats[1:6]]
    assert raised[6:] == [float(v) for v in reference.stats[8:12]]
    text = summary_text(at_150).splitlines()
    assert len(text) == 22 and "maxDets=100 ] = 0.667" in text[8] and "maxDets=150 ] = 1.000" in text[12]
    # a lower max_dets (few queries) adds its own numbers beside the standard ones
    at_50 = evaluate_coco(ground_truth_coco(gt), results, max_dets=50)
    assert {k: at_50[k] for k in stat_names()} == at_100
    assert at_50["AR@maxDets50"] == pytest.approx(50 / 150)
    with pytest.raises(ValueError, match="max_dets must be >= 10"):
        evaluate_coco(ground_truth_coco(gt), results, max_dets=5)


def test_an_empty_result_list_evaluates_to_zero_without_crashing() -> None:
    gt = make_ground_truth()
    with pytest.raises(IndexError):  # the pycocotools crash being guarded
        with contextlib.redirect_stdout(io.StringIO()):
            coco_from_dict(copy.deepcopy(gt)).loadRes([])
    stats = evaluate_coco(ground_truth_coco(gt), [])
    assert all(value == 0.0 for value in stats.values())
    # areas without ground truth stay -1 (pycocotools' "undefined"), as with any result list
    small_only = {**gt, "annotations": [a for a in gt["annotations"] if a["area"] < 32**2]}
    stats = evaluate_coco(ground_truth_coco(small_only), [])
    assert stats["APs"] == 0.0 and stats["APl"] == -1.0 and stats["ARm"] == -1.0


def test_annotation_id_zero_is_renumbered_so_it_can_be_matched() -> None:
    gt = make_ground_truth(first_annotation_id=0)
    image_ids, predictions = perfect_predictions(gt)
    results = predictions_to_coco_results(image_ids, predictions, CATEGORY_IDS)
    assert direct_cocoeval(gt, results).stats[8] < 1.0  # pycocotools never matches id 0: AR100 < 1
    with pytest.raises(ValueError, match="annotation ids < 1"):
        evaluate_coco(coco_from_dict(copy.deepcopy(gt)), results)
    fixed = ground_truth_coco(gt)
    assert min(a["id"] for a in fixed.dataset["annotations"]) == 1
    assert min(a["id"] for a in gt["annotations"]) == 0  # the input is not modified
    assert evaluate_coco(fixed, results)["AR100"] == pytest.approx(1.0)


def test_ground_truth_fills_missing_iscrowd_and_area() -> None:
    gt = make_ground_truth()
    for annotation in gt["annotations"]:
        del annotation["iscrowd"], annotation["area"]
    fixed = ground_truth_coco(gt)
    first = fixed.dataset["annotations"][0]
    assert first["iscrowd"] == 0 and first["area"] == pytest.approx(first["bbox"][2] * first["bbox"][3])


def test_results_format_no_threshold_and_bad_input() -> None:
    prediction = {"scores": torch.tensor([0.9, 0.001, float("nan")]), "labels": torch.tensor([2, 0, 1]),
                  "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 1.5, 2.5], [1.0, 1.0, 2.0, 2.0]])}
    with pytest.warns(UserWarning, match="dropped 1 predictions"):
        results = predictions_to_coco_results([7], [prediction], CATEGORY_IDS)
    assert results == [
        {"image_id": 7, "category_id": 90, "bbox": [10.0, 20.0, 30.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 1.5, 2.5], "score": pytest.approx(0.001)},
    ]
    assert all(type(v) is float for r in results for v in [*r["bbox"], r["score"]])
    with pytest.raises(ValueError, match="label 3, which label_to_category_id does not map"):
        predictions_to_coco_results([7], [{**prediction, "labels": torch.tensor([3, 0, 1])}], CATEGORY_IDS)
    gt = make_ground_truth()
    with pytest.raises(ValueError, match="image id 99, which the ground truth does not have"):
        evaluate_coco(ground_truth_coco(gt), [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_summary_text_reads_like_pycocotools(tmp_path: Path) -> None:
    gt = make_ground_truth(seed=5)
    results = noisy_results(gt)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_gt = coco_from_dict(copy.deepcopy(gt))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        evaluator.summarize()
    text = summary_text(evaluate_coco(ground_truth_coco(gt), results))
    assert text.splitlines() == printed.getvalue().splitlines()
    path = write_coco_results(tmp_path / "out" / "detections.json", results)
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = coco_gt.loadRes(str(path))  # the submission format pycocotools reads
    assert len(loaded.dataset["annotations"]) == len(results)


def test_collector_keeps_one_entry_per_image() -> None:
    collector = CocoResultCollector()
    first = [{"image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]
    collector.update([3, 1], [first, []])
    collector.update([3], [[{**first[0], "score": 0.9}]])  # a repeated (padding) sample
    assert len(collector) == 2 and collector.image_ids == [1, 3]
    assert collector.results == first


# ------------------------------------------------------------------------------------ two processes
class PredictionSet(Dataset):
    """Item i: (image id, scores (Q,), labels (Q,), boxes (Q, 4)) of the i-th ground-truth image."""

    def __init__(self, gt: dict[str, Any]) -> None:
        self.gt = gt
        self.ids = sorted(im["id"] for im in gt["images"])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        prediction = noisy_prediction(self.gt, self.ids[index])
        return self.ids[index], prediction["scores"], prediction["labels"], prediction["boxes"]


def worker(gt_path: str, out_prefix: str) -> None:
    """Shard the predictions with a prepared DataLoader, gather, evaluate; one JSON per process."""
    from accelerate import Accelerator

    torch.set_num_threads(1)
    gt = json.loads(Path(gt_path).read_text())
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(PredictionSet(gt), batch_size=2, shuffle=False))
    collector = CocoResultCollector()
    seen: list[int] = []
    for image_ids, scores, labels, boxes in loader:
        ids = [int(i) for i in image_ids]
        seen += ids
        per_image = [
            predictions_to_coco_results([i], [{"scores": s, "labels": lab, "boxes": b}], CATEGORY_IDS)
            for i, s, lab, b in zip(ids, scores, labels, boxes, strict=True)
        ]
        collector.update(ids, per_image, accelerator)
    stats = evaluate_coco(ground_truth_coco(gt), collector.results, image_ids=collector.image_ids)
    report = {"processes": accelerator.num_processes, "seen": seen, "images": collector.image_ids,
              "results": len(collector.results), "stats": stats}
    Path(f"{out_prefix}.rank{accelerator.process_index}.json").write_text(json.dumps(report))


def test_two_processes_evaluate_exactly_like_one(tmp_path: Path) -> None:
    gt = make_ground_truth(num_images=7, seed=11)  # 7 images over 2 processes x batch 2: the last batch is padded
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    launcher = cpu_launch_command(2)
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run([*launcher, __file__, "worker", str(gt_path), str(tmp_path / "out")], cwd=ROOT,
                             env=environment, capture_output=True, text=True, timeout=240)
    assert process.returncode == 0, process.stderr[-3000:]
    reports = [json.loads((tmp_path / f"out.rank{rank}.json").read_text()) for rank in (0, 1)]

    ids = [im["id"] for im in gt["images"]]
    single = evaluate_coco(ground_truth_coco(gt), noisy_results(gt))
    for report in reports:
        assert report["processes"] == 2
        assert report["images"] == ids and report["results"] == len(ids) * NUM_QUERIES
        assert report["stats"] == single  # all 12 numbers, exactly
    # the loader really was sharded: each process predicted only part of the images
    seen = [set(report["seen"]) for report in reports]
    assert all(len(s) < len(ids) for s in seen) and seen[0] | seen[1] == set(ids)


# ------------------------------------------------------------------------------------ pictures
def test_draw_detections_shows_only_boxes_above_the_threshold(tmp_path: Path) -> None:
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    boxes = torch.tensor([[5.0, 5.0, 20.0, 20.0], [30.0, 10.0, 55.0, 35.0]])
    drawn = draw_detections(image, boxes, torch.tensor([0, 1]), torch.tensor([0.9, 0.2]), ["a", "b"],
                            score_threshold=0.5)
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert drawn[:, 5, 5:20].any()  # the confident box's top edge
    assert not drawn[:, 22:, 28:].any()  # the unconfident one is not drawn (below the first one's caption)
    assert not image.any()  # input untouched
    everything = draw_detections(image, boxes, torch.tensor([0, 1]), torch.tensor([0.9, 0.2]), ["a", "b"], 0.0)
    assert everything[:, 34, 30:55].any()
    normalised = (torch.rand(3, 40, 60) - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / 0.25
    pixels = denormalize(normalised, (0.5, 0.4, 0.3), (0.25, 0.25, 0.25))
    assert pixels.dtype == torch.uint8
    gt = target_boxes_xyxy(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), (40, 60))
    torch.testing.assert_close(gt, torch.tensor([[15.0, 10.0, 45.0, 30.0]]))
    paths = save_overlays([pixels, image], [{"boxes": boxes, "labels": torch.tensor([0, 1]),
                                             "scores": torch.tensor([0.9, 0.8])}] * 2,
                          tmp_path / "overlays", ["a", "b"], gt_boxes=[gt, gt[:0]], min_long_side=0)
    assert [p.name for p in paths] == ["overlay_000.png", "overlay_001.png"]
    written = np.asarray(Image.open(paths[0]))
    assert written.shape == (40, 60, 3)
    np.testing.assert_array_equal(written, draw_detections(pixels, boxes, torch.tensor([0, 1]),
                                                           torch.tensor([0.9, 0.8]), ["a", "b"], 0.5,
                                                           gt_boxes=gt).permute(1, 2, 0).numpy())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} worker GT_JSON OUT_PREFIX")
