"""Image classification on the shared ViT: train, evaluate, predict.

Thin on purpose: parse the command line, load the config, build the task, call the engine.
Runs the same with ``python tasks/classify.py ...`` (one process) and under
``accelerate launch tasks/classify.py ...`` (many).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach a hub from here

CONFIG_FILE = "config.yaml"  # what `fit` saves in every run folder
WEIGHTS_FILE = "model.safetensors"  # what `fit` exports in every run folder

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


def _paragraph(text: str) -> str:
    # RawDescriptionHelpFormatter keeps the examples' line breaks but would not wrap prose.
    return textwrap.fill(text, width=90)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value",
        help="config values replacing the file's, e.g. train.epochs=3 optim.lr=1e-3",
    )


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
        description=_paragraph(
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
    _add_overrides(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate trained weights on the evaluation set",
        description=_paragraph(
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
    _add_overrides(evaluate)

    predict = commands.add_parser(
        "predict",
        help="classify image files or folders",
        description=_paragraph(
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


def _split_resume(args: argparse.Namespace) -> None:
    """`--resume train.epochs=3` swallows the override as its value: give it back, resume 'latest'."""
    value = args.resume
    if value is not None and "=" in value and not Path(value).exists():
        args.overrides = [value, *args.overrides]
        args.resume = "latest"


def _weights_file(weights: Path) -> Path:
    """The weights file: as given, or `model.safetensors` inside a run folder."""
    path = weights / WEIGHTS_FILE if weights.is_dir() else weights
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file (give model.safetensors or the run folder holding it)")
    return path


def _load(args: argparse.Namespace, overrides: Sequence[str]):
    """Load the config: --config, else the run's config.yaml beside --weights."""
    from vit_classification.config import ClassificationConfig
    from vit_training.config import ConfigError, load_config

    path = args.config
    if path is None:
        weights = getattr(args, "weights", None)
        if weights is None:
            raise ConfigError("no --config given")
        folder = weights if weights.is_dir() else weights.parent
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"no --config given and no {CONFIG_FILE} beside the weights in {folder}")
    return load_config(ClassificationConfig, path, overrides)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _configure_logging() -> None:
    """Show this project's INFO lines (checkpoint loading, head reset) on the first process only.

    The rank comes from the launcher's environment: creating Accelerate's state here, before
    `build_accelerator` chooses CPU or GPU, would fix the device setup too early.
    """
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.getLogger("vit_classification").setLevel(logging.INFO if main_process else logging.WARNING)


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4f}" for key, value in metrics.items())


def cmd_train(args: argparse.Namespace) -> int:
    from vit_classification.task import ClassificationTask
    from vit_training.loop import fit

    _split_resume(args)
    overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume is not None else [])
    config = _load(args, overrides)
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

    config = _load(args, args.overrides)
    weights = _weights_file(args.weights)
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

    from vit_classification.metrics import write_predictions_csv
    from vit_classification.model import build_classifier
    from vit_classification.task import predict_images, resolve_config
    from vit_training.loop import load_weights_for_inference

    config = resolve_config(_load(args, args.overrides))
    weights = _weights_file(args.weights)
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

    _configure_logging()
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
    sys.exit(main())
