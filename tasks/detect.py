"""DETR-style object detection on the shared ViT: prepare demo data, train, evaluate, predict.

Thin on purpose: parse the command line, load the config, build the task, call the engine.
Runs the same with ``python tasks/detect.py ...`` (one process) and under
``accelerate launch tasks/detect.py ...`` (many).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach a hub from here

# After the environment above: the imports below read it.
from vit_detection.config import DetectionConfig  # noqa: E402
from vit_detection.prepare import SCENES_NUM_TRAIN  # noqa: E402
from vit_training.cli import (  # noqa: E402
    CONFIG_FILE,
    add_overrides,
    configure_logging,
    exit_status,
    load_run_config,
    paragraph,
    train_overrides,
    weights_file,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

EXAMPLES = """\
examples:
  python tasks/detect.py prepare scenes --output data/fashion_scenes
  python tasks/detect.py prepare trees --output data/trees
  python tasks/detect.py train --config configs/detection/fashion_scenes_cpu.yaml train.epochs=2
  python tasks/detect.py train --config configs/detection/fashion_scenes_cpu.yaml --resume
  python tasks/detect.py evaluate --weights runs/fashion_scenes_cpu
  python tasks/detect.py predict --weights runs/fashion_scenes_cpu image.jpg more_images/ --output detections/
  accelerate launch tasks/detect.py train --config configs/detection/coco_vit_b16.yaml data.root=/data/coco

overrides are key.sub=value pairs applied after the file (YAML values: 3, 1e-4, null, [480,512]),
e.g. optim.lr=2e-4 train.batch_size=8 model.num_queries=50.
"""


def _load_config(args: argparse.Namespace, overrides: Sequence[str]) -> DetectionConfig:
    """The config of --config, else the run's config.yaml beside --weights."""
    return load_run_config(DetectionConfig, args.config, getattr(args, "weights", None), overrides)


def build_parser() -> argparse.ArgumentParser:
    """The command line: `prepare`, `train`, `evaluate` and `predict` subcommands."""
    parser = argparse.ArgumentParser(
        prog="detect.py",
        description="Prepare data for, train, evaluate and use a DETR-style ViT object detector (vitasks).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prepare,train,evaluate,predict}")

    prepare = commands.add_parser(
        "prepare",
        help="write a demo data set as COCO JSON + images",
        description=paragraph(
            "Write demo data in the COCO layout users bring (images/ folders + annotations/instances_*.json): "
            "'scenes' composes Fashion-MNIST objects (Debian package dataset-fashion-mnist) on canvases with "
            "exact boxes; 'trees' tiles the real aerial images with hand-drawn tree boxes bundled in the "
            "PyPI wheel deepforest==2.1.0 (pip install --no-deps deepforest==2.1.0) to at most 400 px."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("dataset", choices=("scenes", "trees"), help="which demo data set")
    prepare.add_argument("--output", type=Path, default=None,
                         help="folder to write (default data/fashion_scenes or data/trees)")
    prepare.add_argument("--num-train", type=int, default=None,
                         help=f"scenes: training images (default {SCENES_NUM_TRAIN})")
    prepare.add_argument("--num-val", type=int, default=None, help="scenes: validation images (default 500)")
    prepare.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    prepare.add_argument("--overwrite", action="store_true", help="replace a folder written with other parameters")

    train = commands.add_parser(
        "train",
        help="train a detector from a config",
        description=paragraph(
            "Train with the config's data, model and recipe. The run folder (train.output_dir) gets "
            "config.yaml (the resolved config), checkpoints/, the metric logs and curves, coco_eval.txt, "
            "coco_results.json, overlays/ and model.safetensors."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", required=True, type=Path, help="YAML file of config values")
    train.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="PATH|latest",
        help="continue a run exactly (sets train.resume): a checkpoint folder, or 'latest' (also what "
             "--resume alone means) for the newest checkpoint in train.output_dir",
    )
    add_overrides(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="COCO evaluation of trained weights",
        description=paragraph(
            "Evaluate exported weights on the config's validation split with pycocotools COCOeval (bbox), "
            "every query kept, and write metrics.json, coco_eval.txt and coco_results.json (the COCO "
            "submission format) to --output. Works under accelerate launch (every image counted once)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("--weights", required=True, type=Path,
                          help="model.safetensors written by train, or the run folder holding it")
    evaluate.add_argument("--config", type=Path, default=None,
                          help=f"YAML config; default: the {CONFIG_FILE} saved beside the weights")
    evaluate.add_argument("--output", type=Path, default=None,
                          help="folder for the result files; default: 'eval' beside the weights")
    add_overrides(evaluate)

    predict = commands.add_parser(
        "predict",
        help="detect objects in image files or folders",
        description=paragraph(
            "Print the detections scoring at least eval.score_threshold for each image (folders are searched "
            "recursively), write every detection to detections.json and a PNG overlay per image to --output."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("--weights", required=True, type=Path,
                         help="model.safetensors written by train, or the run folder holding it")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER", help="images and/or folders")
    predict.add_argument("--config", type=Path, default=None,
                         help=f"YAML config; default: the {CONFIG_FILE} saved beside the weights")
    predict.add_argument("--output", type=Path, default=Path("detections"),
                         help="folder for detections.json and the overlays (default detections/)")
    predict.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    predict.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.sub=value",
                         help="a config override (repeatable), e.g. --set eval.score_threshold=0.3")
    return parser


def _list_images(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no image ({' '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    return files


def cmd_prepare(args: argparse.Namespace) -> int:
    from vit_detection.prepare import prepare_fashion_scenes, prepare_tree_tiles

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


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4f}" for key, value in metrics.items())


def cmd_train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from vit_detection.task import DetectionTask
    from vit_training.loop import fit

    overrides = train_overrides(args)
    task = DetectionTask(_load_config(args, overrides))
    result = fit(task, task.config)
    if PartialState().is_main_process:
        print(f"run folder: {result.output_dir}")
        print(f"weights:    {result.weights_path}")
        if result.metrics:
            print(f"COCO bbox:  {_format(result.metrics)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from vit_detection.model import build_detector
    from vit_detection.task import DetectionTask
    from vit_training.loop import build_accelerator, load_weights_for_inference

    task = DetectionTask(_load_config(args, args.overrides))
    weights = weights_file(args.weights)
    output_dir = args.output if args.output is not None else weights.parent / "eval"
    accelerator = build_accelerator(task.config.train)
    model = load_weights_for_inference(build_detector(task.config.model, load_weights=False), weights)
    eval_set = task.build_eval_dataset()
    if eval_set is None:
        raise FileNotFoundError("the config names no evaluation split (data.val_images / data.val_annotations)")
    loader = DataLoader(eval_set, batch_size=task.config.train.batch_size, shuffle=False,
                        num_workers=task.config.train.num_workers, collate_fn=task.collate_fn(False))
    model, loader = accelerator.prepare(model, loader)
    model.eval()
    with accelerator.autocast():
        metrics = task.evaluate(model, loader, accelerator, output_dir)
    if accelerator.is_main_process:
        record = {"weights": str(weights), "images": len(eval_set), **metrics}
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{len(eval_set)} images: {_format(metrics)}")
        print(f"wrote metrics.json, coco_eval.txt, coco_results.json to {output_dir}")
    accelerator.wait_for_everyone()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from vit_detection.model import build_detector
    from vit_detection.task import predict_images, resolve_config, write_predictions_json
    from vit_training.loop import load_weights_for_inference

    config = resolve_config(_load_config(args, args.overrides))
    weights = weights_file(args.weights)
    model = load_weights_for_inference(build_detector(config.model, load_weights=False), weights)
    device = torch.device("cpu") if args.cpu else PartialState().device
    rows = predict_images(model, _list_images(args.images), config, device, output_dir=args.output)
    threshold = config.eval.score_threshold
    for row in rows:
        shown = [d for d in row["detections"] if d["score"] >= threshold]
        print(f"{row['file']}: {len(shown)} detections >= {threshold}")
        for d in shown:
            box = ", ".join(f"{v:.1f}" for v in d["bbox_xyxy"])
            print(f"  {d['label']:<16} {d['score']:.3f}  [{box}]")
    write_predictions_json(args.output / "detections.json", rows)
    print(f"wrote {args.output / 'detections.json'} and {len(rows)} overlays to {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (2 for a config error, 1 for missing files)."""
    args = build_parser().parse_args(argv)
    from vit_training.config import ConfigError

    configure_logging("vit_detection")
    commands = {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
    try:
        return commands[args.command](args)
    except ConfigError as error:
        print(f"detect.py {args.command}: config error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"detect.py {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(exit_status(main()))
