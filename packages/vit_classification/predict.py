"""Prediction on image files with a trained classifier: `predict_images` and the ``predict`` command.

Images are read like `ImageFolderDataset` reads them and go through the evaluation transform of
the config the weights were trained with.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_training.cli import report_failures
from vit_training.loop import load_weights_for_inference

from .config import ClassificationConfig
from .data import list_images, read_image, resolve_config
from .metrics import write_predictions_csv
from .model import build_classifier
from .transforms import ImageTransform, build_eval_transform

__all__ = [
    "add_predict_arguments",
    "classify_batch",
    "eval_transform",
    "predict_images",
    "run_predict",
]


@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    cfg: ClassificationConfig,
    device: torch.device | str,
    batch_size: int = 64,
    class_names: Sequence[str] | None = None,
    failures: list[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Classify image files (or every image in given folders) with the evaluation transform.

    Images are read like `ImageFolderDataset` reads them (`data.read_image`: any PIL mode,
    converted to `data.channels`, transparency over `data.background`).

    Args:
        model: the classifier (moved to `device` here, put in eval mode).
        paths: image files and/or folders.
        cfg: the resolved config (`resolve_config`) the model was trained with.
        device: where to run.
        batch_size: images per forward pass.
        class_names: index = label; default `cfg.data.class_names`, else "0", "1", ...
        failures: when given, a missing path, an empty folder or an unreadable image is appended
            here as (path, one-line message) and skipped instead of raised; the batch it was
            in is filled with the next readable images, so the others are predicted as usual.

    Returns:
        one dict per image, in the order found: {"sample": path, "predicted_index",
        "predicted_name", "score" (probability), "top5": [(name, probability), ...]}, the keys of
        `metrics.write_predictions_csv`.

    Raises:
        FileNotFoundError: a path is missing or a folder holds no image (without `failures`).
        ValueError: a file is not a readable image (one line naming it; without `failures`).
    """
    data = cfg.data
    transform = eval_transform(cfg)
    files: list[Path] = []
    for item in paths:
        try:
            files.extend(list_images([item]))
        except (ValueError, OSError) as error:
            if failures is None:
                raise
            failures.append((str(item), str(error)))
    model = model.to(device).eval()
    names = list(class_names) if class_names is not None else None
    results: list[dict[str, Any]] = []
    pending = iter(files)
    while True:
        # Read until the batch is full: a bad image is left out, not its whole batch.
        chunk: list[Path] = []
        tensors: list[torch.Tensor] = []
        for path in pending:
            try:
                tensors.append(transform(read_image(path, data.channels, data.background)))
            except (ValueError, OSError) as error:
                if failures is None:
                    raise
                failures.append((str(path), str(error)))
                continue
            chunk.append(path)
            if len(chunk) == batch_size:
                break
        if not chunk:
            break
        rows = classify_batch(model, torch.stack(tensors), cfg, device, class_names=names)
        results.extend({"sample": str(path), **row} for path, row in zip(chunk, rows, strict=True))
    return results


def eval_transform(cfg: ClassificationConfig) -> ImageTransform:
    """The evaluation transform of a resolved config: uint8 (H, W, C) image -> float (C, S, S) tensor.

    Raises:
        ValueError: the config is not resolved (no data.mean / data.std).
    """
    data = cfg.data
    if data.mean is None or data.std is None:
        raise ValueError("predict_images needs a resolved config (data.mean / data.std set): use resolve_config")
    return build_eval_transform(
        data.input_size, data.channels, data.mean, data.std, crop_pct=data.crop_pct, interpolation=data.interpolation
    )


@torch.no_grad()
def classify_batch(
    model: nn.Module,
    images: torch.Tensor,
    cfg: ClassificationConfig,
    device: torch.device | str,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Classify a batch of transformed images (what ``predict`` and `vit_classification.Classifier` share).

    Args:
        model: the classifier, in eval mode on `device` (run under the caller's autocast).
        images: float (B, C, S, S), the output of `eval_transform`.
        cfg: the resolved config (names the classes).
        device: where `model` is.
        class_names: index = label; default `cfg.data.class_names`, else "0", "1", ...
        top_k: how many (name, probability) pairs "top5" holds.

    Returns:
        one dict per image: {"predicted_index", "predicted_name", "score" (probability), "top5":
        [(name, probability), ...] best first}.
    """
    probs = model(images.to(device)).float().softmax(dim=1).cpu()
    if class_names is not None:
        names = list(class_names)
    elif cfg.data.class_names is not None:
        names = list(cfg.data.class_names)
    else:
        names = [str(index) for index in range(probs.shape[1])]
    order = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, :top_k]
    return [
        {
            "predicted_index": int(best[0]),
            "predicted_name": names[int(best[0])],
            "score": float(row[best[0]]),
            "top5": [(names[int(c)], float(row[c])) for c in best],
        }
        for row, best in zip(probs, order, strict=True)
    ]


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` command's own arguments: the images, ``--output``, ``--batch-size``."""
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER", help="images and/or folders")
    parser.add_argument("--output", type=Path, default=None, help="also write a predictions CSV here")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: train.batch_size, the batch evaluate uses)")


def run_predict(args: argparse.Namespace, config: ClassificationConfig, weights: Path, device: torch.device) -> int:
    """Print the predicted label and its probability for each readable image; write the CSV when asked.

    Each bad input (missing, empty folder, unreadable image) gets one line on stderr and the
    others are still predicted; the status is 1 when any failed (`report_failures`).
    """
    config = resolve_config(config)
    model = load_weights_for_inference(build_classifier(config.model, load_weights=False), weights)
    failures: list[tuple[str, str]] = []
    batch_size = args.batch_size or config.train.batch_size
    rows = predict_images(model, args.images, config, device, batch_size=batch_size, failures=failures)
    width = max((len(row["sample"]) for row in rows), default=0)
    for row in rows:
        print(f"{row['sample']:<{width}}  {row['predicted_name']}  {row['score']:.4f}")
    if args.output is not None and rows:
        write_predictions_csv(args.output, rows)
        print(f"wrote {len(rows)} predictions to {args.output}")
    return report_failures(failures, len(rows) + len(failures))
