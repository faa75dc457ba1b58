"""`Detector`: a trained DETR-style detector in three lines of Python.

    from vit_detection import Detector
    model = Detector.from_pretrained("runs/fashion_scenes_cpu")
    print(model.predict("scene.png").above(0.5).names)

The same preprocessing, network and precision as ``vitasks detect predict``: both go through
`predict.DetectionPipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vit_training.api import ImageInput, Predictor, as_uint8_image
from vit_training.data import list_images, read_rgb, to_channels
from vit_training.export import GraphSpec

from .config import DetectionConfig
from .model import build_detector
from .predict import DetectionPipeline
from .task import resolve_config

__all__ = ["Detections", "Detector"]


@dataclass(frozen=True, eq=False)  # numpy fields: compare them with numpy
class Detections:
    """The detections in one image, sorted by score (every query's, as ``predict``'s detections.json).

    Attributes:
        boxes: float (N, 4) boxes (x0, y0, x1, y1) in the image's pixels.
        scores: float (N,).
        labels: int (N,) class indices.
        names: the class name of each detection.
        category_ids: the COCO category id of each detection.
        source: the file the image was read from (None for an in-memory image).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    category_ids: list[int]
    source: str | None = None

    def __repr__(self) -> str:
        best = f", best {self.names[0]} {self.scores[0]:.3f}" if len(self) else ""
        return f"Detections({len(self)} boxes{best}, source={self.source!r})"

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> Detections:
        """The detections scoring at least `threshold`."""
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep],
                          [name for name, kept in zip(self.names, keep, strict=True) if kept],
                          [cid for cid, kept in zip(self.category_ids, keep, strict=True) if kept], self.source)


class Detector(Predictor, pipeline_tag="object-detection"):
    """A trained ViT detector (`Predictor`): ``Detector.from_pretrained(folder).predict(images)``."""

    config_schema = DetectionConfig
    command = "detect"
    pipeline_tag = "object-detection"
    example_input = "scene.png"
    config: DetectionConfig

    @classmethod
    def build_model(cls, config: DetectionConfig) -> nn.Module:
        return build_detector(config.model, load_weights=False)

    @classmethod
    def resolve(cls, config: DetectionConfig) -> DetectionConfig:
        return resolve_config(config)

    def preprocessing(self) -> dict[str, Any]:
        """The evaluation resize (shorter side data.eval_size, longer at most data.max_size), mean/std, classes."""
        data = self.config.data
        return {"task": "object-detection", "channels": 3, "eval_size": data.eval_size, "max_size": data.max_size,
                "mean": list(data.mean), "std": list(data.std), "size_divisor": int(self.model.backbone.patch_size),
                "score_threshold": self.config.eval.score_threshold, "top_k": self.config.eval.top_k,
                "class_names": self.class_names, "category_ids": list(self.config.data.category_ids or [])}

    def graph_spec(self) -> GraphSpec:
        """images (B, 3, H, W) and orig_sizes (B, 2) -> scores, labels, boxes in pixels (`vit_detection.export`)."""
        from .export import graph_spec

        return graph_spec(self.model, self.config, self.preprocessing())

    @staticmethod
    def read(item: ImageInput) -> np.ndarray:
        """One input as uint8 (H, W, 3) RGB, as ``predict`` reads a file (`read_rgb`).

        A PIL image goes through ``convert("RGB")`` as a file does (a palette with transparency
        through RGBA); arrays and tensors follow `vit_training.api.as_uint8_image`, grey replicated.
        """
        if isinstance(item, (str, os.PathLike)):
            return read_rgb(item)
        if isinstance(item, Image.Image):
            if item.mode == "P" and "transparency" in item.info:
                item = item.convert("RGBA")
            return np.asarray(item.convert("RGB") if item.mode != "RGB" else item, dtype=np.uint8).copy()
        return to_channels(as_uint8_image(item), 3)

    @torch.no_grad()
    def predict(self, images: ImageInput | Sequence[ImageInput],
                score_threshold: float | None = None) -> Detections | list[Detections]:
        """Detect objects in one image or several.

        Args:
            images: a file path, a PIL image, a numpy array (H, W[, C]) or a tensor (C, H, W)
                (uint8, or floats in [0, 1]); or a list of them. A folder path stands for every
                image in it.
            score_threshold: keep only detections scoring at least this; default every one (as
                detections.json; ``eval.score_threshold`` is what ``predict`` prints and draws).

        Returns:
            one `Detections` for one image, a list for a list or a folder.
        """
        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, (str, os.PathLike)) and Path(images).is_dir())
        items: list[ImageInput] = []
        for item in [images] if not isinstance(images, (list, tuple)) else images:
            items.extend(list_images([item]) if isinstance(item, (str, os.PathLike)) else [item])
        pipeline = DetectionPipeline.build(self.model, self.config)
        results: list[Detections] = []
        for item in items:
            with self.autocast():
                prediction, rows = pipeline.detect(self.model, self.read(item), self.device)
            # The order of `rows` (by score, as `DetectionPipeline.detect` sorts them).
            order = torch.argsort(prediction["scores"], descending=True)
            found = Detections(
                boxes=np.array([row["bbox_xyxy"] for row in rows], dtype=np.float32).reshape(-1, 4),
                scores=np.array([row["score"] for row in rows], dtype=np.float32),
                labels=prediction["labels"][order].numpy().astype(np.int64),
                names=[row["label"] for row in rows], category_ids=[row["category_id"] for row in rows],
                source=str(item) if isinstance(item, (str, os.PathLike)) else None)
            results.append(found.above(score_threshold) if score_threshold is not None else found)
        return results[0] if single else results
