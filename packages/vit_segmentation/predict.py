"""Segmenting NIfTI volumes and PNG/JPEG slices with trained weights: the ``predict`` command.

A NIfTI file (.nii, .nii.gz) is normalised as ``data.modality`` says (CT window or MR
percentiles), sliced along ``data.axis`` and written back as ``<name>_labels.nii.gz`` with the
input's affine; a PNG/JPEG image is read as grey in [0, 1] (`vit_training.data.read_grey`) and written as
``<name>_labels.png`` (pixel value = class index). Each input also gets ``<name>_overlay.png``.
A bad input (missing, unreadable, not a NIfTI or image) is reported on its own line and the
others are still segmented.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vit_training.cli import report_failures
from vit_training.data import IMAGE_EXTENSIONS, read_grey
from vit_training.loop import load_weights_for_inference

from .config import SegmentationConfig
from .data import Volume, read_nifti_volume, write_nifti_labels
from .model import build_transunet
from .task import predict_volume, resolve_config
from .visualize import overlay_slice_indices, save_overlays

__all__ = ["NIFTI_SUFFIXES", "add_predict_arguments", "input_kind", "run_predict", "segment_nifti", "segment_slice"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def input_kind(path: Path) -> str:
    """``"nifti"`` or ``"image"`` by the file name.

    Raises:
        ValueError: neither suffix (one line naming the accepted ones).
    """
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_EXTENSIONS):
        return "image"
    nifti, images = ", ".join(NIFTI_SUFFIXES), ", ".join(IMAGE_EXTENSIONS)
    raise ValueError(f"{path}: not a NIfTI ({nifti}) or image ({images}) file")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_EXTENSIONS):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` command's own arguments: the input files and ``--output``."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="NIfTI volumes and/or PNG/JPEG images")
    parser.add_argument("--output", type=Path, default=Path("predictions"),
                        help="folder for the label maps and overlays (default: predictions)")


def run_predict(args: argparse.Namespace, config: SegmentationConfig, weights: Path, device: torch.device) -> int:
    """Segment every input; print each one's output file and the classes found.

    Each bad input gets one line on stderr and the others are still segmented; the status is 1
    when any failed (`report_failures`).
    """
    config = resolve_config(config)
    model = load_weights_for_inference(build_transunet(config.model, load_weights=False), weights)
    model = model.to(device).eval()
    args.output.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    for path in args.inputs:
        try:
            _predict_one(model, path, config, args.output)
        except (ValueError, OSError, EOFError) as error:
            failures.append((str(path), str(error)))
    return report_failures(failures, len(args.inputs))


def segment_nifti(model: torch.nn.Module, path: Path, config: SegmentationConfig) -> tuple[np.ndarray, Volume]:
    """Segment one NIfTI volume as ``predict`` does (under the caller's autocast).

    The file is normalised as ``data.modality`` says and sliced along ``data.axis``.

    Returns:
        labels (S, H, W) (S = the slicing axis; `write_nifti_labels` moves it back) and the `Volume` read.
    """
    data = config.data
    volume = read_nifti_volume(path, None, modality=data.modality, axis=data.axis,
                               ct_window=tuple(data.ct_window), mr_percentiles=tuple(data.mr_percentiles))
    return segment_slice(model, volume.image, config), volume


def segment_slice(model: torch.nn.Module, image: np.ndarray, config: SegmentationConfig) -> np.ndarray:
    """Segment a float (H, W) grey slice in [0, 1] (or a normalised (S, H, W) volume) at the config's input size.

    Returns:
        labels of the input's shape, uint8 (uint16 above 256 classes).
    """
    data = config.data
    return predict_volume(model, image, data.input_size, data.interpolation, config.eval.slice_batch_size,
                          **config.eval.inference_options())


def _predict_one(model: torch.nn.Module, path: Path, config: SegmentationConfig, output: Path) -> None:
    """Segment one NIfTI volume or image, write its label map and overlay, print one line."""
    from PIL import Image

    names = list(config.data.class_names)
    kind = input_kind(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    stem = _stem(path)
    if kind == "nifti":
        labels, volume = segment_nifti(model, path, config)
        target = output / f"{stem}_labels.nii.gz"
        write_nifti_labels(target, labels, volume)
        indices = overlay_slice_indices(labels, max(config.eval.overlay_slices, 1))
        save_overlays(output / f"{stem}_overlay.png", volume.image[indices], labels[indices], names,
                      titles=[f"{stem} slice {index}" for index in indices])
    else:
        image = read_grey(path)
        labels = segment_slice(model, image, config)
        target = output / f"{stem}_labels.png"
        Image.fromarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(target)
        save_overlays(output / f"{stem}_overlay.png", image[None], labels[None], names, titles=[stem])
    present = np.unique(labels)
    classes = ", ".join(names[int(value) - 1] for value in present if value > 0) or "background only"
    print(f"{path} -> {target} ({classes})")
