"""COCO outputs of the detection commands: ``predict``'s coco_results.json (the results format
pycocotools reads), its image ids from ``--coco-annotations`` or images.json, and ``evaluate``'s
standard numbers at maxDets 100 beside a raised ``eval.max_dets``.

The run folder holds config.yaml and seeded random weights (as `fit` leaves them): the checks are
about formats and ids, not about what a model learned.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from safetensors.torch import save_file

from vit_detection.coco_eval import raised_stat_names, stat_names
from vit_training.cli import discover_tasks, run_task
from vit_training.config import load_config, save_config

SPEC = discover_tasks()["detect"]
CATEGORY_IDS = [3, 7]  # the data set's own ids, with a gap: labels 0, 1 <-> ids 3, 7
IMAGE_IDS = [11, 25, 42]  # not 1..N, so a sequential numbering would not pass
MODEL = ["model.backbone.preset=vit_micro_patch4_28", "model.backbone.patch_size=8", "model.backbone.img_size=48",
         "model.backbone.depth=1", "model.hidden_dim=32", "model.num_heads=2", "model.dim_feedforward=64",
         "model.num_queries=6", "model.enc_layers=1", "model.dec_layers=1", "data.train_sizes=[48]",
         "data.eval_size=48", "data.max_size=64", "eval.top_k=null", "eval.overlay_images=0",
         # one image per batch: evaluate and predict then run the model on identical inputs
         "train.batch_size=1", "train.mixed_precision=no"]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def write_coco(root: Path) -> Path:
    """Three images of different sizes with coloured boxes, and instances_val.json (ids 11, 25, 42)."""
    rng = np.random.default_rng(0)
    (root / "val").mkdir(parents=True)
    images, annotations = [], []
    for image_id in IMAGE_IDS:
        height, width = int(rng.integers(36, 52)), int(rng.integers(36, 60))
        canvas = np.full((height, width, 3), 20, np.uint8)
        for _ in range(2):
            category = int(rng.choice(CATEGORY_IDS))
            w, h = int(rng.integers(10, 20)), int(rng.integers(10, 20))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            canvas[y:y + h, x:x + w] = (230, 40, 40) if category == 3 else (40, 200, 60)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(canvas).save(root / "val" / f"img_{image_id}.png")
        images.append({"id": image_id, "file_name": f"img_{image_id}.png", "width": width, "height": height})
    categories = [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}]
    (root / "annotations").mkdir()
    path = root / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    # the training split is only read for the class names: the same file does
    (root / "annotations" / "instances_train.json").write_text(path.read_text())
    return path


def make_run(root: Path, folder: Path, *extra: str) -> Path:
    """config.yaml and model.safetensors: seeded weights with noise, so scores and boxes vary."""
    config = load_config(SPEC.config_schema, None, [f"data.root={root}", "data.train_images=val", *MODEL, *extra,
                                                    f"train.output_dir={folder}"])
    task = SPEC.build_task(config)
    torch.manual_seed(0)
    model = SPEC.inference_model(task)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    folder.mkdir(parents=True)
    save_config(task.config, folder / "config.yaml")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def run(*argv: str) -> int:
    AcceleratorState._reset_state(reset_partial_state=True)
    return run_task(SPEC, list(argv), prog="detect.py")


def cocoeval_stats(annotations: Path, results: Path) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        evaluator = COCOeval(gt, gt.loadRes(str(results)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def ranked(results: list[dict]) -> list[tuple]:
    return sorted((r["image_id"], r["category_id"], round(r["score"], 5), *(round(v, 3) for v in r["bbox"]))
                  for r in results)


def test_predict_coco_results_evaluate_like_evaluate_and_raised_max_dets_reports_both(tmp_path: Path) -> None:
    annotations = write_coco(tmp_path / "coco")
    run_dir = make_run(tmp_path / "coco", tmp_path / "run", "eval.max_dets=120")
    out = tmp_path / "predicted"
    assert run("predict", "--weights", str(run_dir), str(tmp_path / "coco" / "val"), "--output", str(out),
               "--coco-annotations", str(annotations), "--cpu") == 0
    results = json.loads((out / "coco_results.json").read_text())
    assert not (out / "images.json").exists()  # the ids come from the annotation file
    assert {r["image_id"] for r in results} == set(IMAGE_IDS)
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    assert len(results) == len(IMAGE_IDS) * 6  # every query of every image, no threshold
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} and len(r["bbox"]) == 4 for r in results)
    rows = {Path(row["file"]).name: row for row in json.loads((out / "detections.json").read_text())}
    first = rows["img_11.png"]["detections"][0]
    x0, y0, x1, y1 = first["bbox_xyxy"]
    as_coco = next(r for r in results if r["image_id"] == 11 and r["score"] == first["score"])
    assert as_coco["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-4)  # xywh in pixels

    # A ground truth the random model partly finds (its two best boxes per image, and the drawn
    # ones it misses), so the numbers compared below are not all zero.
    data = json.loads(annotations.read_text())
    for image_id in IMAGE_IDS:
        best = sorted((r for r in results if r["image_id"] == image_id), key=lambda r: -r["score"])[:2]
        for r in best:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
                                        "category_id": r["category_id"], "bbox": [round(v, 1) for v in r["bbox"]],
                                        "area": r["bbox"][2] * r["bbox"][3]})
    annotations.write_text(json.dumps(data))

    assert run("evaluate", "--weights", str(run_dir)) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    # evaluate: the standard 12 at maxDets 100 and, labelled, the same numbers at the raised 120
    assert set(stat_names()) | set(raised_stat_names(120)) <= set(metrics)
    assert "AR100" in metrics and "AP@maxDets120" in metrics and "AR@maxDets120" in metrics
    assert 0 < metrics["AP50"] < 1 and 0 < metrics["AR100"] < 1
    text = (run_dir / "eval" / "coco_eval.txt").read_text().splitlines()
    assert len(text) == 22 and "maxDets=100" in text[0] and "maxDets=120" in text[12]
    # predict's results are evaluate's (one image per batch in both), and pycocotools reads both
    # files as they are, to evaluate's standard numbers
    assert ranked(results) == ranked(json.loads((run_dir / "eval" / "coco_results.json").read_text()))
    standard = [metrics[name] for name in stat_names()]
    assert cocoeval_stats(annotations, out / "coco_results.json") == pytest.approx(standard, abs=1e-6)
    assert cocoeval_stats(annotations, run_dir / "eval" / "coco_results.json") == pytest.approx(standard, abs=1e-12)


def test_predict_numbers_images_without_annotations_and_reports_unknown_files(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    annotations = write_coco(tmp_path / "coco")
    run_dir = make_run(tmp_path / "coco", tmp_path / "run")
    stray = tmp_path / "stray.png"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(stray)
    files = [str(tmp_path / "coco" / "val" / "img_25.png"), str(stray)]

    out = tmp_path / "numbered"
    assert run("predict", "--weights", str(run_dir), *files, "--output", str(out), "--cpu") == 0
    images = json.loads((out / "images.json").read_text())
    assert images == [{"id": 1, "file_name": files[0], "width": images[0]["width"], "height": images[0]["height"]},
                      {"id": 2, "file_name": files[1], "width": 30, "height": 40}]
    results = json.loads((out / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2} and {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    # images.json is COCO's images list: with annotations it makes a ground truth loadRes accepts
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": [], "categories": [{"id": i} for i in CATEGORY_IDS]}
        gt.createIndex()
        assert len(gt.loadRes(str(out / "coco_results.json")).getAnnIds()) == len(results)

    # a file the annotation file does not name: one line, the others are still predicted and written
    capsys.readouterr()
    out = tmp_path / "matched"
    assert run("predict", "--weights", str(run_dir), *files, "--output", str(out), "--coco-annotations",
               str(annotations), "--cpu") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(str(stray))]
    assert len(errors) == 1 and "no image of" in errors[0]
    assert {r["image_id"] for r in json.loads((out / "coco_results.json").read_text())} == {25}
    # an annotation file without the model's categories is a one-line error naming it
    (tmp_path / "other.json").write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "x"}]}))
    assert run("predict", "--weights", str(run_dir), files[0], "--output", str(out), "--coco-annotations",
               str(tmp_path / "other.json"), "--cpu") == 1
    bad = json.loads(annotations.read_text())
    bad["categories"] = [{"id": 1, "name": "x"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    capsys.readouterr()
    assert run("predict", "--weights", str(run_dir), files[0], "--output", str(out), "--coco-annotations",
               str(tmp_path / "bad.json"), "--cpu") == 1
    assert "lack the model's category ids [3, 7]" in capsys.readouterr().err
