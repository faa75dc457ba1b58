"""`Classifier`: a trained image classifier in three lines of Python.

    from vit_classification import Classifier
    model = Classifier.from_pretrained("runs/fashion_mnist_cpu")
    print(model.predict("shirt.png").name)

The same preprocessing, network and precision as ``vitasks classify predict``: both go through
`predict.eval_transform` and `predict.classify_batch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vit_training.api import ImageInput, Predictor, as_uint8_image
from vit_training.data import _pil_to_uint8, list_images, read_image, to_channels
from vit_training.export import GraphSpec

from .config import ClassificationConfig
from .data import resolve_config
from .model import build_classifier
from .predict import classify_batch, eval_transform

__all__ = ["Classification", "Classifier"]


@dataclass(frozen=True)
class Classification:
    """The prediction for one image.

    Attributes:
        index: the predicted class index.
        name: its name.
        score: its probability (softmax).
        top_k: (name, probability) of the best classes, best first.
        source: the file the image was read from (None for an in-memory image).
    """

    index: int
    name: str
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    source: str | None = None


class Classifier(Predictor, pipeline_tag="image-classification"):
    """A trained ViT classifier (`Predictor`): ``Classifier.from_pretrained(folder).predict(images)``."""

    config_schema = ClassificationConfig
    command = "classify"
    pipeline_tag = "image-classification"
    config: ClassificationConfig

    @classmethod
    def build_model(cls, config: ClassificationConfig) -> nn.Module:
        return build_classifier(config.model, load_weights=False)

    @classmethod
    def resolve(cls, config: ClassificationConfig) -> ClassificationConfig:
        return resolve_config(config)

    def preprocessing(self) -> dict[str, Any]:
        """Input size, channels, mean/std, interpolation, crop_pct and the background under transparency."""
        data = self.config.data
        return {"task": "image-classification", "input_size": data.input_size, "channels": data.channels,
                "mean": list(data.mean or []), "std": list(data.std or []), "interpolation": data.interpolation,
                "crop_pct": data.crop_pct, "background": data.background, "class_names": self.class_names}

    def graph_spec(self) -> GraphSpec:
        """images (B, C, S, S) normalised -> logits and probabilities (B, K) (`vit_classification.export`)."""
        from .export import graph_spec

        return graph_spec(self.model, self.config, self.preprocessing())

    def read(self, item: ImageInput) -> np.ndarray:
        """One input as uint8 (H, W, data.channels), as ``predict`` reads a file (`read_image`).

        A PIL image of any mode is converted like a file of that mode (transparency over
        ``data.background``); arrays and tensors follow `vit_training.api.as_uint8_image`.
        """
        data = self.config.data
        if isinstance(item, (str, os.PathLike)):
            return read_image(item, data.channels, data.background)
        if isinstance(item, Image.Image):
            grey = int(data.background)
            pixels = _pil_to_uint8(item, None, (grey, grey, grey), (0.0, 1.0))
            return to_channels(pixels, data.channels)
        return to_channels(as_uint8_image(item), data.channels)

    @torch.no_grad()
    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 5,
                batch_size: int | None = None) -> Classification | list[Classification]:
        """Classify one image or several.

        Args:
            images: a file path, a PIL image, a numpy array (H, W[, C]) or a tensor (C, H, W)
                (uint8, or floats in [0, 1]); or a list of them. A folder path stands for every
                image in it (searched recursively, as ``predict`` does).
            top_k: how many classes `Classification.top_k` lists.
            batch_size: images per forward pass; default ``train.batch_size`` (as ``predict``).

        Returns:
            one `Classification` for one image, a list for a list or a folder.

        Raises:
            FileNotFoundError: a missing file or an empty folder.
            ValueError: an unreadable image, or an array of another shape or dtype.
        """
        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, (str, os.PathLike)) and Path(images).is_dir())
        items: list[ImageInput] = []
        for item in [images] if not isinstance(images, (list, tuple)) else images:
            if isinstance(item, (str, os.PathLike)):
                items.extend(list_images([item]))
            else:
                items.append(item)
        transform = eval_transform(self.config)
        size = batch_size or self.config.train.batch_size
        results: list[Classification] = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            batch = torch.stack([transform(self.read(item)) for item in chunk])
            with self.autocast():
                rows = classify_batch(self.model, batch, self.config, self.device, top_k=top_k)
            results.extend(
                Classification(index=row["predicted_index"], name=row["predicted_name"], score=row["score"],
                               top_k=list(row["top5"]),
                               source=str(item) if isinstance(item, (str, os.PathLike)) else None)
                for item, row in zip(chunk, rows, strict=True))
        return results[0] if single else results
