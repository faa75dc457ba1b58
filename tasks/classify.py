"""Image classification on the shared ViT: train, evaluate, predict.

Thin on purpose: parse the command line, load the config, build the task, call the engine.
Runs the same with ``python tasks/classify.py ...`` (one process) and under
``accelerate launch tasks/classify.py ...`` (many).
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
from vit_classification.config import ClassificationConfig  # noqa: E402
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

EXAMPLES = """\
examples:
  python tasks/classify.py train --config configs/classification/fashion_mnist_cpu.yaml train.epochs=2
  python tasks/classify.py train --config configs/classification/fashion_mnist_cpu.yaml --resume=latest
  python tasks/classify.py evaluate --weights runs/fashion_mnist_cpu
  python tasks/classify.py predict --weights runs/fashion_mnist_cpu shirt.png photos/ --output predictions.csv
  accelerate launch tasks/classify.py train --config configs/classification/imagenet_vit_b16_finetune.yaml \\
      data.root=/data/imagenet

overrides are key.sub=value pairs applied after the file (YAML values: 3, 1e-4, null, [0.9,0.95]),
e.g. optim.lr=2e-3 train.batch_size=64 data.num_train_samples=5000.
"""


def _load_config(args: argparse.Namespace, overrides: Sequence[str]) -> ClassificationConfig:
    """The config of --config, else the run's config.yaml beside --weights."""
    return load_run_config(ClassificationConfig, args.config, getattr(args, "weights", None), overrides)


def build_parser() -> argparse.ArgumentParser:
    """The command line: `train`, `evaluate` and `predict` subcommands."""
    parser = argparse.ArgumentParser(
        prog="classify.py",
        description="Train, evaluate and use a ViT image classifier (vitasks).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,predict}")

    train = commands.add_parser(
        "train",
        help="train a classifier from a config",
        description=paragraph(
            "Train with the config's data, model and recipe. The run folder (train.output_dir) gets "
            "config.yaml (the resolved config), checkpoints/, the metric logs and curves, "
            "confusion_matrix.png, per_class_accuracy.json, predictions.png and model.safetensors."
        ),
        epilog="example:\n  python tasks/classify.py train --config configs/classification/fashion_mnist_cpu.yaml "
               "train.epochs=2 train.output_dir=runs/try",
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
        help="evaluate trained weights on the evaluation set",
        description=paragraph(
            "Evaluate exported weights on the config's evaluation set (test split, or the ImageFolder "
            "val tree) and write metrics.json, predictions.csv, confusion_matrix.png and "
            "per_class_accuracy.json to --output. Works under accelerate launch (every image counted once)."
        ),
        epilog="example:\n  python tasks/classify.py evaluate --weights runs/fashion_mnist_cpu/model.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument(
        "--weights", required=True, type=Path,
        help="model.safetensors written by train, or the run folder holding it",
    )
    evaluate.add_argument(
        "--config", type=Path, default=None,
        help=f"YAML config; default: the {CONFIG_FILE} saved beside the weights",
    )
    evaluate.add_argument(
        "--output", type=Path, default=None,
        help="folder for the result files; default: 'eval' beside the weights",
    )
    add_overrides(evaluate)

    predict = commands.add_parser(
        "predict",
        help="classify image files or folders",
        description=paragraph(
            "Print the predicted label and its probability for each image (folders are searched "
            "recursively), using the evaluation transform of the config the weights were trained with."
        ),
        epilog="example:\n  python tasks/classify.py predict --weights runs/fashion_mnist_cpu photos/ "
               "--output predictions.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument(
        "--weights", required=True, type=Path,
        help="model.safetensors written by train, or the run folder holding it",
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER", help="images and/or folders")
    predict.add_argument(
        "--config", type=Path, default=None,
        help=f"YAML config; default: the {CONFIG_FILE} saved beside the weights",
    )
    predict.add_argument("--output", type=Path, default=None, help="also write a predictions CSV here")
    predict.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    predict.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    predict.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="key.sub=value",
        help="a config override (repeatable), e.g. --set data.crop_pct=1.0",
    )
    return parser


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4f}" for key, value in metrics.items())


def cmd_train(args: argparse.Namespace) -> int:
    from vit_classification.task import ClassificationTask
    from vit_training.loop import fit

    overrides = train_overrides(args)
    config = _load_config(args, overrides)
    task = ClassificationTask(config)
    result = fit(task, task.config)
    if _is_main_process():
        print(f"run folder: {result.output_dir}")
        print(f"weights:    {result.weights_path}")
        if result.metrics:
            print(f"evaluation: {_format(result.metrics)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from vit_classification.model import build_classifier
    from vit_classification.task import ClassificationTask
    from vit_training.loop import build_accelerator, load_weights_for_inference

    config = _load_config(args, args.overrides)
    weights = weights_file(args.weights)
    output_dir = args.output if args.output is not None else weights.parent / "eval"
    task = ClassificationTask(config)
    accelerator = build_accelerator(task.config.train)
    model = load_weights_for_inference(build_classifier(task.config.model, load_weights=False), weights)
    eval_set = task.build_eval_dataset()
    if eval_set is None:
        raise FileNotFoundError("the config names no evaluation set (data.root/val or data.val_dir for ImageFolder)")
    loader = DataLoader(
        eval_set, batch_size=task.config.train.batch_size, shuffle=False,
        num_workers=task.config.train.num_workers, collate_fn=task.collate_fn(False),
    )
    model, loader = accelerator.prepare(model, loader)
    with accelerator.autocast():
        metrics = task.evaluate(model, loader, accelerator, output_dir, predictions_path=output_dir / "predictions.csv")
    if accelerator.is_main_process:
        record = {"weights": str(weights), "samples": len(eval_set), **metrics}
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{len(eval_set)} images: {_format(metrics)}")
        print(f"wrote metrics.json, predictions.csv, confusion_matrix.png, per_class_accuracy.json to {output_dir}")
    accelerator.wait_for_everyone()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from vit_classification.data import resolve_config
    from vit_classification.metrics import write_predictions_csv
    from vit_classification.model import build_classifier
    from vit_classification.task import predict_images
    from vit_training.loop import load_weights_for_inference

    config = resolve_config(_load_config(args, args.overrides))
    weights = weights_file(args.weights)
    model = load_weights_for_inference(build_classifier(config.model, load_weights=False), weights)
    device = torch.device("cpu") if args.cpu else PartialState().device
    rows = predict_images(model, args.images, config, device, batch_size=args.batch_size)
    width = max(len(row["sample"]) for row in rows)
    for row in rows:
        print(f"{row['sample']:<{width}}  {row['predicted_name']}  {row['score']:.4f}")
    if args.output is not None:
        write_predictions_csv(args.output, rows)
        print(f"wrote {len(rows)} predictions to {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (2 for a config error, 1 for missing files)."""
    args = build_parser().parse_args(argv)
    from vit_training.config import ConfigError

    configure_logging("vit_classification")
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        return cmd_predict(args)
    except ConfigError as error:
        print(f"classify.py {args.command}: config error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        # Missing data or weights: the message names the path; a traceback would add nothing.
        print(f"classify.py {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(exit_status(main()))
