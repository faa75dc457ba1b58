"""The detection Task end to end on a tiny COCO set made here: config resolution, training through
`vit_training.fit` (loss falls), COCO evaluation equal to a direct pycocotools call on the results
it wrote, the CLI's evaluate and predict, and clear errors."""

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

from vit_detection.config import DetectionConfig
from vit_detection.task import DetectionTask, resolve_config
from vit_training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
CATEGORY_IDS = [3, 7]  # gaps on purpose: labels 0, 1 <-> ids 3, 7
COLOURS = {3: (230, 40, 40), 7: (40, 200, 60)}


def write_split(root: Path, split: str, num_images: int, seed: int) -> None:
    """Coloured rectangles on a dark canvas: red = category 3, green = category 7."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = int(rng.integers(40, 56)), int(rng.integers(40, 64))
        canvas = np.full((height, width, 3), 20, np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            category = int(rng.choice(CATEGORY_IDS))
            w, h = int(rng.integers(10, 20)), int(rng.integers(10, 20))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            canvas[y:y + h, x:x + w] = COLOURS[category]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(canvas).save(root / split / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
    categories = [{"id": 7, "name": "green"}, {"id": 3, "name": "red"}]  # unsorted on purpose
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    write_split(root, "train", 16, seed=0)
    write_split(root, "val", 6, seed=1)
    return root


def tiny_config(root: Path, output_dir: Path, *extra: str) -> DetectionConfig:
    overrides = [
        f"data.root={root}", f"train.output_dir={output_dir}",
        "model.backbone.preset=vit_micro_patch4_28", "model.backbone.patch_size=8", "model.backbone.img_size=48",
        "model.backbone.depth=2",
        "model.hidden_dim=32", "model.num_heads=2", "model.dim_feedforward=64", "model.num_queries=6",
        "model.enc_layers=1", "model.dec_layers=2", "model.dropout=0.0",
        "data.train_sizes=[48]", "data.eval_size=48", "data.max_size=64", "data.crop_prob=0.0",
        "eval.max_dets=100", "eval.overlay_images=2",
        "optim.lr=1e-3", "schedule.name=constant", "schedule.warmup_steps=0", "train.batch_size=4", "train.epochs=1",
        "train.mixed_precision=no", "train.log_every_steps=1", *extra,
    ]
    return load_config(DetectionConfig, ROOT / "configs/detection/fashion_scenes_cpu.yaml", overrides)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_resolve_reads_classes_and_category_ids_sorted_by_id(coco_root: Path, tmp_path: Path) -> None:
    config = resolve_config(tiny_config(coco_root, tmp_path))
    assert config.data.class_names == ["red", "green"]
    assert config.data.category_ids == [3, 7]
    assert config.model.num_classes == 2
    with pytest.raises(ConfigError, match="model.num_classes=5 but the data has 2 categories"):
        resolve_config(tiny_config(coco_root, tmp_path, "model.num_classes=5"))


def test_max_dets_never_drops_a_query(coco_root: Path, tmp_path: Path) -> None:
    config = resolve_config(tiny_config(coco_root, tmp_path, "model.num_queries=150", "eval.max_dets=100",
                                        "eval.top_k=null"))
    assert config.eval.max_dets == 150  # one detection per query
    config = resolve_config(tiny_config(coco_root, tmp_path, "model.num_queries=20", "eval.top_k=120"))
    assert config.eval.max_dets == 120  # top-k post-processing: k detections per image
    with pytest.raises(ConfigError, match=r"eval.top_k=0 must be >= 1"):
        tiny_config(coco_root, tmp_path, "eval.top_k=0")


def test_missing_annotations_name_the_file_and_the_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"instances_train.json: training annotations not found.*prepare"):
        DetectionTask(tiny_config(tmp_path / "nothing", tmp_path))


def test_config_errors_name_the_field(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dn_groups=2 needs query_type='anchor'"):
        tiny_config(coco_root, tmp_path, "model.query_type=learned", "model.dn_groups=2")
    with pytest.raises(ConfigError, match="two_stage=true needs query_type='anchor'"):
        tiny_config(coco_root, tmp_path, "model.query_type=learned", "model.dn_groups=0", "model.two_stage=true")
    with pytest.raises(ConfigError, match=r"patch_size=8 must equal the conv_stem's stride 4 \(2\*\*2\)"):
        tiny_config(coco_root, tmp_path, "model.backbone.conv_stem=[16,32]", "model.backbone.patch_size=8")
    with pytest.raises(ConfigError, match=r"model.class_score.*'focal'.*softmax.*sigmoid"):
        tiny_config(coco_root, tmp_path, "model.class_score=focal")
    with pytest.raises(ConfigError, match=r"focal_alpha=1.5 must lie in \(0, 1\)"):
        tiny_config(coco_root, tmp_path, "loss.focal_alpha=1.5")
    with pytest.raises(ConfigError, match="max_dets=5 must be > 10"):
        tiny_config(coco_root, tmp_path, "eval.max_dets=5")
    with pytest.raises(ConfigError, match="unknown key 'model.num_querys'.*did you mean 'num_queries'"):
        tiny_config(coco_root, tmp_path, "model.num_querys=3")


def test_backbone_architecture_overrides_reach_the_built_model(coco_root: Path, tmp_path: Path) -> None:
    config = resolve_config(tiny_config(coco_root, tmp_path, "model.backbone.embed_dim=48",
                                        "model.backbone.num_heads=3", "model.backbone.mlp_ratio=2.0"))
    backbone = DetectionTask(config).build_model().backbone
    assert backbone.embed_dim == 48 and len(backbone.blocks) == 2
    assert backbone.blocks[0].attn.num_heads == 3
    assert backbone.blocks[0].mlp.fc1.out_features == 96  # 2.0 x 48
    with pytest.raises(ConfigError, match="mlp_ratio=0.0 must be > 0"):
        tiny_config(coco_root, tmp_path, "model.backbone.mlp_ratio=0.0")


def test_train_lowers_the_loss_and_evaluation_equals_pycocotools(coco_root: Path, tmp_path: Path) -> None:
    from vit_training.loop import fit

    torch.manual_seed(0)
    # Four images without augmentation, one optimizer step per epoch: the set loss must fall.
    task = DetectionTask(tiny_config(coco_root, tmp_path / "run", "train.epochs=30", "data.num_train_samples=4",
                                     "data.hflip=0.0", "train.eval_every_epochs=0"))
    result = fit(task, task.config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row.get("split") == "train" and "loss" in row]
    assert len(losses) == 30
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    # Our 12 numbers equal pycocotools run directly on the results file the evaluation wrote.
    results = json.loads((tmp_path / "run" / "coco_results.json").read_text())
    # The demo recipe's top-k post-processing (k = 100 >= 6 queries x 2 classes): every (query, class)
    # pair of every image, no threshold.
    model = task.config.model
    assert task.config.eval.top_k >= model.num_queries * model.num_classes
    assert len(results) == 6 * model.num_queries * model.num_classes
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_root / "annotations" / "instances_val.json"))
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        assert task.config.eval.max_dets == 100  # summarize() reads AP at maxDets=100 by value
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert list(result.metrics.values()) == pytest.approx(list(evaluator.stats), abs=1e-12)
    assert sorted((tmp_path / "run" / "overlays").glob("*.png"))
    assert (tmp_path / "run" / "coco_eval.txt").read_text().count("Average") == 12


def test_cli_evaluate_and_predict(coco_root: Path, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "tasks"))
    import detect

    run = tmp_path / "run"
    overrides = _cli_overrides(coco_root, run)
    assert detect.main(["train", "--config", str(ROOT / "configs/detection/fashion_scenes_cpu.yaml"), *overrides]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert detect.main(["evaluate", "--weights", str(run)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 6 and "AP50" in metrics
    AcceleratorState._reset_state(reset_partial_state=True)
    out = tmp_path / "predicted"
    assert detect.main(["predict", "--weights", str(run), str(coco_root / "val" / "1.png"), "--output", str(out),
                        "--cpu"]) == 0
    rows = json.loads((out / "detections.json").read_text())
    # the recipe's top-k post-processing: all 6 queries x 2 classes, unthresholded
    assert rows[0]["file"].endswith("1.png") and len(rows[0]["detections"]) == 6 * 2
    scores = [d["score"] for d in rows[0]["detections"]]
    assert scores == sorted(scores, reverse=True)
    assert (out / "1.png").is_file()
    # No config beside missing weights: a config error (2); a config but no weights file: missing file (1).
    assert detect.main(["predict", "--weights", str(tmp_path / "missing"), str(out)]) == 2
    assert detect.main(["predict", "--weights", str(tmp_path / "missing"), "--config", str(run / "config.yaml"),
                        str(out)]) == 1


def _cli_overrides(root: Path, run: Path) -> list[str]:
    return [f"data.root={root}", f"train.output_dir={run}", "model.backbone.preset=vit_micro_patch4_28",
                 "model.backbone.patch_size=8", "model.backbone.img_size=48", "model.backbone.depth=1",
                 "model.hidden_dim=32", "model.num_heads=2",
                 "model.dim_feedforward=64", "model.num_queries=6", "model.enc_layers=1", "model.dec_layers=1",
                 "data.train_sizes=[48]", "data.eval_size=48", "data.max_size=64", "eval.max_dets=20",
            "schedule.warmup_steps=0", "train.batch_size=4", "train.epochs=1", "train.mixed_precision=no"]
