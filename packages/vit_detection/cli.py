"""The detection task's command line: ``vitasks detect ...`` (and ``tasks/detect.py``).

Registered in pyproject.toml under the entry-point group ``vitasks.tasks``; `vit_training.cli`
gives it train, evaluate, predict and ``--print-config``; ``prepare`` (demo data) is its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vit_training.cli import SubCommand, TaskCommands, format_metrics
from vit_training.export import export_command

from .config import DetectionConfig
from .predict import add_predict_arguments, run_predict
from .prepare import SCENES_NUM_TRAIN

EXAMPLES = """\
examples:
  vitasks detect prepare scenes --output data/fashion_scenes
  vitasks detect prepare trees --output data/trees
  vitasks detect train --config fashion_scenes_cpu train.epochs=2
  vitasks detect train --config fashion_scenes_cpu --resume
  vitasks detect evaluate --weights runs/fashion_scenes_cpu
  vitasks detect predict --weights runs/fashion_scenes_cpu image.jpg more_images/ --output detections/
  accelerate launch tasks/detect.py train --config coco_vit_b16 data.root=/data/coco

overrides are key.sub=value pairs applied after the file (YAML values: 3, 1e-4, null, [480,512]),
e.g. optim.lr=2e-4 train.batch_size=8 model.num_queries=50.
"""


def _build_task(config: DetectionConfig) -> Any:
    from .task import DetectionTask

    return DetectionTask(config)


def _inference_model(task: Any) -> Any:
    from .model import build_detector

    return build_detector(task.config.model, load_weights=False)


def _add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=("scenes", "trees"), help="which demo data set")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder to write (default data/fashion_scenes or data/trees)")
    parser.add_argument("--num-train", type=int, default=None,
                        help=f"scenes: training images (default {SCENES_NUM_TRAIN})")
    parser.add_argument("--num-val", type=int, default=None, help="scenes: validation images (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder written with other parameters")


def _prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_fashion_scenes, prepare_tree_tiles

    if args.dataset == "scenes":
        output = args.output or Path("data/fashion_scenes")
        sizes = {k: v for k, v in (("num_train", args.num_train), ("num_val", args.num_val)) if v is not None}
        summary = prepare_fashion_scenes(output, seed=args.seed, overwrite=args.overwrite, **sizes)
    else:
        output = args.output or Path("data/trees")
        summary = prepare_tree_tiles(output, seed=args.seed, overwrite=args.overwrite)
    print(json.dumps(summary, indent=1))
    print(f"wrote {output}")
    return 0


PREPARE = SubCommand(
    name="prepare",
    help="write a demo data set as COCO JSON + images",
    add_arguments=_add_prepare_arguments,
    run=_prepare,
    description=(
        "Write demo data in the COCO layout users bring (images/ folders + annotations/instances_*.json): "
        "'scenes' composes Fashion-MNIST objects (Debian package dataset-fashion-mnist) on canvases with "
        "exact boxes; 'trees' tiles the real aerial images with hand-drawn tree boxes bundled in the "
        "PyPI wheel deepforest==2.1.0 (pip install --no-deps deepforest==2.1.0) to at most 400 px."
    ),
)

def _predictor() -> Any:
    from .api import Detector

    return Detector


EXPORT = export_command("detect", _predictor)

COMMANDS = TaskCommands(
    name="detect",
    description="Prepare data for, train, evaluate and use a DETR-style ViT object detector.",
    config_schema=DetectionConfig,
    config_folder="detection",
    build_task=_build_task,
    headline=format_metrics,  # COCO box AP: AP 0.4430  AP50 0.6880  AP75 0.4900 ...
    predict=run_predict,
    add_predict_arguments=add_predict_arguments,
    predict_help="detect objects in image files or folders",
    predict_description=(
        "Print the detections scoring at least eval.score_threshold for each image (folders are searched "
        "recursively), write every detection to detections.json and, in the COCO results format, to coco_results.json "
        "(image ids from --coco-annotations, else numbered as in images.json), and a PNG overlay per image to --output."
    ),
    inference_model=_inference_model,
    evaluate_files=("coco_eval.txt", "coco_results.json"),
    unit="images",
    extra_commands=(PREPARE, EXPORT),
    examples=EXAMPLES,
)
