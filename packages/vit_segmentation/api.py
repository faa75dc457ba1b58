"""`Segmenter`: a trained TransUNet-style segmenter in three lines of Python.

    from vit_segmentation import Segmenter
    model = Segmenter.from_pretrained("runs/mri_lobes_cpu")
    model.predict("scan.nii.gz").save("scan_labels.nii.gz")  # on the scan's own grid and header

The same preprocessing, network and precision as ``vitasks segment predict``: both go through
`predict.segment_nifti` and `predict.segment_slice`.
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

from vit_training.api import ImageInput, Predictor
from vit_training.data import read_grey
from vit_training.export import GraphSpec

from .config import SegmentationConfig
from .data import Volume, write_source_labels
from .model import build_transunet
from .predict import expand_inputs, input_kind, segment_nifti, segment_slice
from .task import resolve_config

__all__ = ["Segmentation", "Segmenter"]


@dataclass(frozen=True, eq=False)  # numpy fields: compare them with numpy
class Segmentation:
    """The label map of one input.

    Attributes:
        labels: integer class indices (0 = background): for a NIfTI volume in the file's own voxel
            order and grid (X, Y, Z; reorientation and resampling undone), so `affine` maps it to
            world coordinates; for a 2D input (H, W); for an in-memory volume (S, H, W) as given.
        affine: the 4x4 voxel-to-world affine of the NIfTI input, else None.
        class_names: the names of classes 1, 2, ... (index 0 is background).
        source: the file read (None for an in-memory input).
        volume: the NIfTI `Volume` read (its header is reused by `save`), else None.
    """

    labels: np.ndarray
    affine: np.ndarray | None
    class_names: list[str]
    source: str | None = None
    volume: Volume | None = None

    def __repr__(self) -> str:
        return f"Segmentation(labels {self.labels.shape}, classes present {np.unique(self.labels).tolist()}, " \
               f"source={self.source!r})"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the labels as ``predict`` does: NIfTI on the input's grid (header kept), or a PNG of class indices."""
        path = Path(path)
        if self.volume is not None:
            write_source_labels(path, self.labels, self.volume)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(self.labels.astype(np.uint8 if self.labels.max(initial=0) < 256 else np.uint16)).save(path)
        return path


class Segmenter(Predictor, pipeline_tag="image-segmentation"):
    """A trained ViT segmenter (`Predictor`): ``Segmenter.from_pretrained(folder).predict(inputs)``."""

    config_schema = SegmentationConfig
    command = "segment"
    pipeline_tag = "image-segmentation"
    example_input = "scan.nii.gz"
    config: SegmentationConfig

    @classmethod
    def build_model(cls, config: SegmentationConfig) -> nn.Module:
        return build_transunet(config.model, load_weights=False)

    @classmethod
    def resolve(cls, config: SegmentationConfig) -> SegmentationConfig:
        return resolve_config(config)

    def preprocessing(self) -> dict[str, Any]:
        """Modality and its normalisation (CT window, MR percentiles, per channel), orientation, slicing
        axis, spacing, input size, interpolation."""
        data = self.config.data
        return {"task": "image-segmentation", "modality": data.modality, "ct_window": list(data.ct_window),
                "mr_percentiles": list(data.mr_percentiles), "axis": data.axis, "input_size": list(data.input_size),
                "interpolation": data.interpolation, "channels": len(data.channels) if data.channels else 1,
                "channel_names": list(data.channels) if data.channels else None,
                "normalization": list(data.normalization) if data.normalization else None,
                "orientation": data.orientation, "context_slices": data.context_slices,
                "target_spacing": list(data.target_spacing) if data.target_spacing is not None else None,
                "image_range": [0.0, 1.0],
                "num_classes": self.config.model.num_classes, "class_names": ["background", *self.class_names]}

    def graph_spec(self) -> GraphSpec:
        """slices (B, C, H, W) -> logits (B, K, H, W) and labels (B, H, W) (`vit_segmentation.export`)."""
        from .export import graph_spec

        return graph_spec(self.model, self.config, self.preprocessing())

    @torch.no_grad()
    def predict(self, inputs: ImageInput | Sequence[ImageInput]) -> Segmentation | list[Segmentation]:
        """Segment one input or several.

        Args:
            inputs: a NIfTI file (.nii, .nii.gz: read as training reads it: normalised per
                channel, reoriented to ``data.orientation``, sliced along ``data.axis``, resampled
                to ``data.target_spacing``; with several ``data.channels`` the ``<case>_0000``
                file, its other channels beside it), a PNG/JPEG file or PIL image (read as grey in [0, 1]), a numpy array
                or tensor (H, W) slice or (S, H, W) volume already normalised to [0, 1] (uint8 is
                divided by 255); or a list of them.

        Returns:
            one `Segmentation` for one input, a list for a list.

        Raises:
            FileNotFoundError: a missing file.
            ValueError: an unreadable file, or an array of another shape.
        """
        single = not isinstance(inputs, (list, tuple))
        results = [self._predict_one(item) for item in ([inputs] if single else inputs)]
        return results[0] if single else results

    def _predict_one(self, item: ImageInput) -> Segmentation:
        names = self.class_names
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            kind = input_kind(path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            with self.autocast():
                if kind == "nifti":
                    # With several data.channels a <case>_0000 file brings its sibling channel files.
                    (case_files,) = expand_inputs(path, self.config)
                    labels, volume = segment_nifti(self.model, case_files, self.config)
                    return Segmentation(volume.to_source(labels), volume.affine, names, str(path), volume)
                labels = segment_slice(self.model, read_grey(path), self.config)
            return Segmentation(labels, None, names, str(path))
        if isinstance(item, Image.Image):
            # As `read_grey` decodes a file: 16-bit by 65535, 32-bit by its maximum, the rest through "L".
            if item.mode.startswith("I;16") or item.mode == "I":
                array = np.asarray(item, dtype=np.float32)
                image = array / 65535.0 if item.mode.startswith("I;16") else array / max(float(array.max()), 1.0)
            else:
                image = np.asarray(item.convert("L"), dtype=np.float32) / 255.0
        else:
            array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if array.ndim not in (2, 3):
                raise ValueError(f"expected a (H, W) slice or an (S, H, W) volume, got shape {array.shape}")
            image = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        with self.autocast():
            labels = segment_slice(self.model, image, self.config)
        return Segmentation(labels, None, names)
