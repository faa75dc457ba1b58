"""Prediction on image files with a trained detector: `predict_images` and the ``predict`` command.

Each image goes through the evaluation transform of the config the weights were trained with;
every query's detection is kept (sorted by score) and those scoring at least
``eval.score_threshold`` are printed and drawn.

The command writes ``detections.json`` (per file: its size and every detection, class names
included) and ``coco_results.json``, the COCO results format that pycocotools' ``COCO.loadRes``
and the COCO evaluation server read: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``
with boxes in the image's pixels and the data set's own category ids (``data.category_ids``). The
image ids come from ``--coco-annotations`` (a COCO JSON whose ``images`` name the files: results
then evaluate against that file directly); without it the images are numbered 1..N in the order
predicted and ``images.json`` beside the results maps each id to its file (COCO's ``images`` list).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from vit_training.cli import report_failures
from vit_training.data import list_images, one_line
from vit_training.loop import load_weights_for_inference

from .coco_eval import CocoResult, predictions_to_coco_results, write_coco_results
from .config import DetectionConfig
from .data import collate_detection, read_rgb
from .model import build_detector
from .postprocess import PostProcess
from .task import resolve_config
from .transforms import build_detection_transforms
from .visualize import save_overlays

__all__ = [
    "DetectionPipeline",
    "add_predict_arguments",
    "coco_image_ids",
    "coco_results_from_rows",
    "predict_images",
    "run_predict",
    "write_predictions_json",
]


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
        One dict per image: "file", "width", "height" (the image's pixels) and "detections", a list
        of {"label", "category_id", "score", "bbox_xyxy"} in those pixels, sorted by score, every
        detection (no threshold): one per query, or `eval.top_k`.
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
        rows.append({"file": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                     "detections": detections})
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


def coco_image_ids(files: Sequence[Path], annotations: Path,
                   category_ids: Sequence[int]) -> tuple[dict[Path, int], list[tuple[str, str]]]:
    """The COCO image id of each file, from the ``images`` of a COCO JSON (``--coco-annotations``).

    A file matches the image whose ``file_name`` is the longest tail of its path ("1.png" matches
    val/1.png; "val/1.png" tells val/1.png from train/1.png).

    Args:
        files: the images to predict.
        annotations: a COCO JSON with ``images`` [{"id", "file_name", ...}] (annotations not needed:
            COCO's test-dev image info files work), or such an ``images`` list itself (images.json).
        category_ids: the model's category ids (``data.category_ids``), checked against the file's
            ``categories`` when it has any.

    Returns:
        ``{file: image id}`` for the files found, and (file, one-line message) for those that are not
        (or match two images equally well).

    Raises:
        FileNotFoundError, ValueError: the file is missing, not COCO JSON, has no images, or its
            categories do not hold the model's category ids (each one line naming the file).
    """
    annotations = Path(annotations)
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: COCO annotation file not found (--coco-annotations)")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotations}: not valid JSON ({one_line(error)})") from error
    images = data if isinstance(data, list) else data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise ValueError(f"{annotations}: no 'images' list to take the image ids from")
    categories = data.get("categories") if isinstance(data, dict) else None
    known = {int(c["id"]) for c in categories or [] if isinstance(c, Mapping) and "id" in c}
    missing = sorted(set(int(i) for i in category_ids) - known) if known else []
    if missing:
        raise ValueError(
            f"{annotations}: categories {sorted(known)} lack the model's category ids {missing} (data.category_ids)"
        )
    by_name: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for image in images:
        try:
            parts = Path(str(image["file_name"])).parts
            by_name.setdefault(parts[-1], []).append((parts, int(image["id"])))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"{annotations}: image entry {image!r} needs 'id' and 'file_name'") from None
    ids: dict[Path, int] = {}
    failures: list[tuple[str, str]] = []
    for file in files:
        parts = Path(file).parts
        matches = [(len(p), i) for p, i in by_name.get(parts[-1], []) if parts[-len(p):] == p]
        longest = max((length for length, _ in matches), default=0)
        best = sorted({i for length, i in matches if length == longest})
        if not best:
            failures.append((str(file), f"no image of {annotations} has this file_name"))
        elif len(best) > 1:
            failures.append((str(file), f"matches image ids {best} of {annotations} equally (give paths as in file_name)"))
        else:
            ids[Path(file)] = best[0]
    return ids, failures


def coco_results_from_rows(rows: Sequence[Mapping[str, Any]], image_ids: Sequence[int]) -> list[CocoResult]:
    """`predict_images` rows -> COCO results (`coco_eval.predictions_to_coco_results`), every detection.

    Args:
        rows: one per image, with "detections" [{"category_id", "score", "bbox_xyxy"}] in pixels.
        image_ids: the COCO image id of each row.
    """
    predictions = [
        {"scores": torch.tensor([d["score"] for d in row["detections"]], dtype=torch.float32),
         "labels": torch.tensor([d["category_id"] for d in row["detections"]], dtype=torch.long),
         "boxes": torch.tensor([d["bbox_xyxy"] for d in row["detections"]], dtype=torch.float32).reshape(-1, 4)}
        for row in rows
    ]
    # The rows carry category ids already (the labels' mapping was applied by the pipeline).
    identity = {int(d["category_id"]): int(d["category_id"]) for row in rows for d in row["detections"]}
    return predictions_to_coco_results(list(image_ids), predictions, identity)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` command's own arguments: the images, ``--output`` and ``--coco-annotations``."""
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER", help="images and/or folders")
    parser.add_argument("--output", type=Path, default=Path("detections"),
                        help="folder for detections.json, coco_results.json and the overlays (default detections/)")
    parser.add_argument("--coco-annotations", type=Path, default=None, metavar="JSON",
                        help="a COCO JSON whose 'images' give the image ids of coco_results.json (matched by "
                             "file_name); default: ids 1..N in prediction order, mapped to files in images.json")


def run_predict(args: argparse.Namespace, config: DetectionConfig, weights: Path, device: torch.device) -> int:
    """Print the detections above ``eval.score_threshold``; write detections.json, coco_results.json
    (and images.json without ``--coco-annotations``) and the overlays.

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
    annotations = getattr(args, "coco_annotations", None)
    known_ids: dict[Path, int] | None = None
    if annotations is not None:
        known_ids, unmatched = coco_image_ids(files, annotations, config.data.category_ids)
        failures.extend(unmatched)
        files = [file for file in files if Path(file) in known_ids]
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
        if known_ids is not None:
            image_ids = [known_ids[Path(row["file"])] for row in rows]
        else:
            image_ids = list(range(1, len(rows) + 1))
            images = [{"id": i, "file_name": row["file"], "width": row["width"], "height": row["height"]}
                      for i, row in zip(image_ids, rows, strict=True)]
            (args.output / "images.json").write_text(json.dumps(images, indent=1) + "\n")
        write_coco_results(args.output / "coco_results.json", coco_results_from_rows(rows, image_ids))
        written = "detections.json, coco_results.json" + ("" if known_ids is not None else ", images.json")
        print(f"wrote {written} and {len(rows)} overlays to {args.output}")
    return report_failures(failures, len(rows) + len(failures))
