"""Prediction on image files with a trained detector: `predict_images` and the ``predict`` command.

Each image goes through the evaluation transform of the config the weights were trained with;
every query's detection is kept (sorted by score) and those scoring at least
``eval.score_threshold`` are printed and drawn.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from vit_training.cli import report_failures
from vit_training.data import list_images
from vit_training.loop import load_weights_for_inference

from .config import DetectionConfig
from .data import collate_detection, read_rgb
from .model import build_detector
from .postprocess import PostProcess
from .task import resolve_config
from .transforms import build_detection_transforms
from .visualize import save_overlays

__all__ = ["DetectionPipeline", "add_predict_arguments", "predict_images", "run_predict", "write_predictions_json"]


@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: Sequence[Path],
    config: DetectionConfig,
    device: torch.device,
    output_dir: Path | None = None,
    failures: list[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Detect objects in image files with the evaluation transform of `config` (resolved).

    Args:
        model: a trained `DETR` (e.g. `build_detector` + `load_weights_for_inference`).
        paths: image files.
        config: the resolved config the weights were trained with.
        device: where to run.
        output_dir: when given, a PNG overlay per image (boxes scoring >= eval.score_threshold).
        failures: when given, an unreadable image is appended here as (path, one-line message)
            and skipped instead of raised.

    Returns:
        One dict per image: "file", and "detections", a list of {"label", "category_id", "score",
        "bbox_xyxy"} in the image's own pixels, sorted by score, every detection (no threshold):
        one per query, or `eval.top_k`.
    """
    pipeline = DetectionPipeline.build(model, config)
    model = model.to(device).eval()
    rows = []
    for path in paths:
        try:
            rgb = read_rgb(path)
        except (ValueError, OSError) as error:
            if failures is None:
                raise
            failures.append((str(path), str(error)))
            continue
        prediction, detections = pipeline.detect(model, rgb, device)
        rows.append({"file": str(path), "detections": detections})
        if output_dir is not None:
            save_overlays([torch.from_numpy(rgb).permute(2, 0, 1)], [prediction], output_dir, pipeline.names,
                          score_threshold=config.eval.score_threshold, names=[Path(path).stem])
    return rows


@dataclass(frozen=True)
class DetectionPipeline:
    """The evaluation transform, padding and post-processing of a resolved config (``predict`` and `Detector`).

    Attributes:
        transform: the evaluation transform (resize to data.eval_size / data.max_size, normalise).
        postprocess: logits and boxes -> scored boxes in the image's pixels.
        patch: the backbone's patch size (images are padded to a multiple of it).
        names: class names, index = label.
        category_ids: the COCO category id of each label.
    """

    transform: Callable[..., Any]
    postprocess: PostProcess
    patch: int
    names: list[str]
    category_ids: list[int]

    @classmethod
    def build(cls, model: nn.Module, config: DetectionConfig) -> DetectionPipeline:
        """The pipeline of `config` (resolved) for `model` (a `DETR`)."""
        data = config.data
        transform = build_detection_transforms(False, train_sizes=data.train_sizes, eval_size=data.eval_size,
                                               max_size=data.max_size, mean=data.mean, std=data.std)
        patch = int(extract_model_from_parallel(model, keep_torch_compile=False).backbone.patch_size)
        postprocess = PostProcess(top_k=config.eval.top_k, class_score=config.model.class_score)
        return cls(transform, postprocess, patch, list(data.class_names), list(data.category_ids))

    @torch.no_grad()
    def detect(self, model: nn.Module, rgb: np.ndarray,
               device: torch.device) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Detect objects in one uint8 (H, W, 3) RGB image (under the caller's autocast).

        Returns:
            the post-processed prediction ({"scores" (N,), "labels" (N,), "boxes" (N, 4) xyxy in
            the image's pixels}, on the CPU) and its detections sorted by score: {"label",
            "category_id", "score", "bbox_xyxy"}.
        """
        image, _, _ = self.transform(rgb, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
        images, pad_mask, _ = collate_detection([(image, {})], size_divisor=self.patch)
        outputs = model(images.to(device), pad_mask.to(device))
        outputs = {key: outputs[key].float() for key in ("pred_logits", "pred_boxes")}
        orig = torch.tensor([[rgb.shape[0], rgb.shape[1]]], device=device)
        prediction = {k: v.cpu() for k, v in self.postprocess(outputs, orig)[0].items()}
        order = torch.argsort(prediction["scores"], descending=True)
        detections = [
            {"label": self.names[int(prediction["labels"][i])],
             "category_id": self.category_ids[int(prediction["labels"][i])],
             "score": float(prediction["scores"][i]), "bbox_xyxy": [float(v) for v in prediction["boxes"][i]]}
            for i in order
        ]
        return prediction, detections


def write_predictions_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """`predict_images` rows as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` command's own arguments: the images and ``--output``."""
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER", help="images and/or folders")
    parser.add_argument("--output", type=Path, default=Path("detections"),
                        help="folder for detections.json and the overlays (default detections/)")


def run_predict(args: argparse.Namespace, config: DetectionConfig, weights: Path, device: torch.device) -> int:
    """Print the detections above ``eval.score_threshold``; write detections.json and the overlays.

    Each bad input (missing, empty folder, unreadable image) gets one line on stderr and the
    others are still predicted; the status is 1 when any failed (`report_failures`).
    """
    config = resolve_config(config)
    failures: list[tuple[str, str]] = []
    files: list[Path] = []
    for item in args.images:
        try:
            files.extend(list_images([item]))
        except (ValueError, OSError) as error:
            failures.append((str(item), str(error)))
    model = load_weights_for_inference(build_detector(config.model, load_weights=False), weights)
    rows = predict_images(model, files, config, device, output_dir=args.output, failures=failures)
    threshold = config.eval.score_threshold
    for row in rows:
        shown = [d for d in row["detections"] if d["score"] >= threshold]
        print(f"{row['file']}: {len(shown)} detections >= {threshold}")
        for d in shown:
            box = ", ".join(f"{v:.1f}" for v in d["bbox_xyxy"])
            print(f"  {d['label']:<16} {d['score']:.3f}  [{box}]")
    if rows:
        write_predictions_json(args.output / "detections.json", rows)
        print(f"wrote {args.output / 'detections.json'} and {len(rows)} overlays to {args.output}")
    return report_failures(failures, len(rows) + len(failures))
