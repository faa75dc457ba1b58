"""Segmenting NIfTI volumes and PNG/JPEG slices with trained weights: the ``predict`` command.

A NIfTI case is read as training reads it (`task.nifti_read_options`: per-channel
normalisation, reorientation to ``data.orientation``, slicing along ``data.axis``, resampling to
``data.target_spacing``) and its labels are written as ``<case>.nii.gz``, as nnU-Net names them
(``<case>`` is the file name without ``.nii[.gz]`` and nnU-Net's ``_0000``), back on the input's
own grid, orientation, affine and header. An input may be a NIfTI file, a folder of them (an
``imagesTs/`` folder: every case in it; with C > 1 ``data.channels`` a case is its files
``<case>_0000`` ... ``<case>_{C-1:04d}``, or one 4D file), or a PNG/JPEG image, read as grey in
[0, 1] (`vit_training.data.read_grey`) and written as ``<name>_labels.png`` (pixel value = class
index). Each case also gets ``<name>_overlay.png``. A bad input (missing, unreadable, not a NIfTI
or image, a channel file missing) is reported on its own line and the others are still segmented.
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
from .data import _NNUNET_CHANNEL, Volume, case_name, find_nifti_cases, read_nifti_volume, write_nifti_labels
from .model import build_transunet
from .task import nifti_read_options, predict_volume, resolve_config
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
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE",
                        help="NIfTI volumes, folders of them (e.g. imagesTs/) and/or PNG/JPEG images")
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
    inputs: list[Path | tuple[Path, ...]] = []
    for path in args.inputs:
        try:
            # The channel files of one case, all named, are one case.
            inputs.extend(item for item in expand_inputs(path, config) if item not in inputs)
        except (ValueError, OSError) as error:
            failures.append((str(path), str(error)))
    total = len(inputs) + len(failures)
    for item in inputs:
        try:
            _predict_one(model, item, config, args.output)
        except (ValueError, OSError, EOFError) as error:
            failures.append((str(item if isinstance(item, Path) else item[0]), str(error)))
    return report_failures(failures, total)


def _channels(config: SegmentationConfig) -> int:
    return len(config.data.channels) if config.data.channels else 1


def expand_inputs(path: Path, config: SegmentationConfig) -> list[Path | tuple[Path, ...]]:
    """The cases an input names: a folder gives each NIfTI case in it; a NIfTI file ``<case>_0000``
    with C > 1 channels gives its channel files ``<case>_0000`` ... (one 4D file stays itself);
    anything else is itself.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a folder without NIfTI files; a channel file missing (naming the case and file).
    """
    if path.is_dir():
        return [images for _, images, _ in find_nifti_cases(path.parent, images_dir=path.name, labels_dir=None,
                                                            channels=_channels(config))]
    channels = _channels(config)
    if channels == 1 or input_kind(path) != "nifti" or not path.is_file():
        return [path]
    stem = _stem(path)
    match = _NNUNET_CHANNEL.match(stem)
    if match is None:
        return [path]  # one MSD file holding the channels as a 4th dimension
    suffix = path.name[len(stem):]
    files = tuple(path.with_name(f"{match.group('case')}_{c:04d}{suffix}") for c in range(channels))
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise ValueError(f"case {match.group('case')!r}: channel file {missing} not found "
                         f"({channels} channels, data.channels={list(config.data.channels or [])})")
    return [files]


def segment_nifti(model: torch.nn.Module, path: Path | tuple[Path, ...], config: SegmentationConfig
                  ) -> tuple[np.ndarray, Volume]:
    """Segment one NIfTI case as ``predict`` does (under the caller's autocast).

    The case is read as training reads it (`task.nifti_read_options`: normalisation per channel,
    ``data.orientation``, ``data.axis``, ``data.target_spacing``).

    Args:
        path: the image file, or the case's channel files in order.

    Returns:
        labels (S, H, W) on the working grid (`write_nifti_labels` / `Volume.to_source` take them
        back to the file's grid) and the `Volume` read.
    """
    volume = read_nifti_volume(path, None, **nifti_read_options(config))
    return segment_slice(model, volume.image, config), volume


def segment_slice(model: torch.nn.Module, image: np.ndarray, config: SegmentationConfig) -> np.ndarray:
    """Segment a float (H, W) grey slice in [0, 1] (or a normalised (S, H, W) / (S, C, H, W) volume).

    Returns:
        labels of the input's shape, uint8 (uint16 above 256 classes).
    """
    data = config.data
    return predict_volume(model, image, data.input_size, data.interpolation, config.eval.slice_batch_size,
                          context_slices=data.context_slices, **config.eval.inference_options())


def _predict_one(model: torch.nn.Module, item: Path | tuple[Path, ...], config: SegmentationConfig,
                 output: Path) -> None:
    """Segment one NIfTI case or image, write its label map and overlay, print one line."""
    from PIL import Image

    names = list(config.data.class_names)
    path = item if isinstance(item, Path) else item[0]
    kind = input_kind(path)
    for file in [item] if isinstance(item, Path) else item:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such file")
    stem = _stem(path)
    if kind == "nifti":
        case = case_name(path)
        target = output / f"{case}.nii.gz"
        if target.resolve() in {file.resolve() for file in ([item] if isinstance(item, Path) else item)}:
            raise ValueError(f"{path}: the prediction {target.name} would overwrite the input; choose another --output")
        labels, volume = segment_nifti(model, item, config)
        write_nifti_labels(target, labels, volume)
        indices = overlay_slice_indices(labels, max(config.eval.overlay_slices, 1))
        shown = volume.image[indices] if volume.image.ndim == 3 else volume.image[indices, 0]
        save_overlays(output / f"{case}_overlay.png", shown, labels[indices], names,
                      titles=[f"{case} slice {index}" for index in indices])
    else:
        image = read_grey(path)
        labels = segment_slice(model, image, config)
        target = output / f"{stem}_labels.png"
        Image.fromarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(target)
        save_overlays(output / f"{stem}_overlay.png", image[None], labels[None], names, titles=[stem])
    present = np.unique(labels)
    classes = ", ".join(names[int(value) - 1] for value in present if value > 0) or "background only"
    print(f"{path} -> {target} ({classes})")
