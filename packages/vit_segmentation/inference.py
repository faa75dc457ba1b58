"""How a batch of slices is turned into class scores: resized whole slices or Gaussian-weighted sliding windows.

Two ways to run a model trained on slices of `data.input_size` (h, w) over slices of any size (H, W):

``"resize"`` (TransUNet's `test_single_volume`, the default): every slice is resized to (h, w), one
    forward pass, the argmax resized back with nearest neighbours. One pass per slice, but a slice
    larger than (h, w) is seen at a lower resolution, and thin structures can vanish.
``"sliding_window"`` (MONAI's ``sliding_window_inference(mode="gaussian")``, nnU-Net): windows of
    (h, w) at the slice's own resolution, placed every ``(1 - overlap) * window`` pixels (the last
    one flush with the far edge), their softmax outputs blended with a Gaussian importance map
    (sigma = 1/8 of the window per axis, so a window's centre counts more than its border) and
    normalised by the summed weights. A slice smaller than the window is padded with zeros
    (symmetrically, as MONAI does) and the padding cropped from the result. The model then sees
    pixels at the scale of the volume, so this fits a model trained at the volume's own pixel
    size (patches, or a grid resampled to `data.target_spacing`); one that was trained on slices
    shrunk to (h, w) sees everything larger than it learned.

Either can average test-time flips (`tta_flips`): the softmax of the model over the slices flipped
along the listed axes, flipped back, averaged with the unflipped pass. Cost: one forward pass per
window per flip; for ``sliding_window`` with overlap 0.5 about ``(2H/h) * (2W/w)`` windows per slice.

After either, `keep_largest_component` can post-process the label volume as nnU-Net does: for the
chosen classes, every voxel outside the class's largest connected component (in 3D, across slices)
becomes background. It removes the scattered false positives that inflate HD95 when each structure
is known to be one piece.

Every tensor here is (B, C, H, W); the functions run on the images' device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "FLIP_AXES",
    "INFERENCE_MODES",
    "InferenceMode",
    "RESIZE_BACK_MODES",
    "ResizeBack",
    "flip_combinations",
    "gaussian_importance_map",
    "keep_largest_component",
    "largest_component_classes",
    "predict_with_flips",
    "sliding_window_predict",
    "window_starts",
]

InferenceMode = Literal["resize", "sliding_window"]
INFERENCE_MODES: tuple[str, ...] = ("resize", "sliding_window")
# How `resize` inference returns to the slice's own size: the argmax labels with nearest neighbours
# (TransUNet's test_single_volume) or the class probabilities, bilinear, argmax at full size (what
# nnU-Net and MONAI do when they resample a prediction back to the image's grid).
ResizeBack = Literal["labels", "probabilities"]
RESIZE_BACK_MODES: tuple[str, ...] = ("labels", "probabilities")

# Axis names of a slice as the configs spell them (augment.flip_axis uses the same words).
FLIP_AXES: dict[str, int] = {"height": 0, "width": 1}

# sigma = window / 8 per axis: nnU-Net's choice and MONAI's sigma_scale=0.125.
SIGMA_SCALE = 0.125
# Weights below this are raised to it (MONAI's floor): the corner pixels of a slice are covered by a
# single window's border, where the Gaussian is ~3e-4 of its centre; a floor keeps their weight sane.
MIN_WEIGHT = 1e-3

Predictor = Callable[[torch.Tensor], torch.Tensor]


def gaussian_importance_map(
    window: Sequence[int], sigma_scale: float = SIGMA_SCALE, device: torch.device | str | None = None
) -> torch.Tensor:
    """The (h, w) float32 weight of each pixel of a window: a separable Gaussian around its centre.

    ``exp(-d^2 / (2 sigma^2))`` per axis with d the distance from the window's centre
    ``(size - 1) / 2`` and ``sigma = sigma_scale * size``; the product of the two axes, peak 1,
    floored at `MIN_WEIGHT`.
    """
    if len(window) != 2 or min(window) < 1:
        raise ValueError(f"window must be (h, w) with both >= 1, got {tuple(window)}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    axes = []
    for size in window:
        distance = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
        sigma = sigma_scale * size
        axes.append(torch.exp(distance**2 / (-2.0 * sigma**2)))
    weights = axes[0][:, None] * axes[1][None, :]
    return weights.clamp_(min=max(float(weights.min()), MIN_WEIGHT))


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of the windows along one axis of length `size` >= `window`.

    The step is ``int(window * (1 - overlap))`` (at least 1; a window as long as the axis is
    placed once), windows are placed at 0, step, 2 step, ... until one reaches the end, and that
    last one is moved back to end flush with the axis (MONAI's ``dense_patch_slices``).
    """
    if window < 1 or size < window:
        raise ValueError(f"need 1 <= window <= size, got window {window} and size {size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    if size == window:
        return [0]
    step = max(int(window * (1.0 - overlap)), 1)
    count = math.ceil((size - window) / step) + 1
    return [min(index * step, size - window) for index in range(count)]


def sliding_window_predict(
    predictor: Predictor,
    images: torch.Tensor,
    window: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 16,
    sigma_scale: float = SIGMA_SCALE,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Blend a model's outputs over overlapping windows of each image, weighted by a Gaussian.

    Args:
        predictor: windows (N, C_in, h, w) -> scores (N, C, h, w) (logits or probabilities: they
            are blended as given).
        images: (B, C_in, H, W) float.
        window: (h, w), the size the model was trained at.
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1).
        batch_size: windows per predictor call (windows of different images share a call).
        sigma_scale: the Gaussian's sigma as a fraction of the window, per axis.
        pad_value: fill of the padding of an image smaller than the window along an axis.

    Returns:
        (B, C, H, W) float32: for each pixel, sum over the windows covering it of
        ``weight * score`` divided by the sum of their weights.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height_window, width_window = (int(v) for v in window)
    num_images, _, height, width = images.shape
    # Pad an axis shorter than the window: half before, the rest after (MONAI's split).
    pad_h = max(height_window - height, 0)
    pad_w = max(width_window - width, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        images = F.pad(images, (left, pad_w - left, top, pad_h - top), mode="constant", value=pad_value)
    padded_h, padded_w = images.shape[-2:]
    weights = gaussian_importance_map((height_window, width_window), sigma_scale, images.device)
    positions = list(
        itertools.product(
            range(num_images),
            window_starts(padded_h, height_window, overlap),
            window_starts(padded_w, width_window, overlap),
        )
    )

    output: torch.Tensor | None = None
    weight_sum = torch.zeros((padded_h, padded_w), dtype=torch.float32, device=images.device)
    for first in range(0, len(positions), batch_size):
        chunk = positions[first:first + batch_size]
        crops = torch.stack(
            [images[b, :, y:y + height_window, x:x + width_window] for b, y, x in chunk]
        )
        scores = predictor(crops).float()
        if scores.ndim != 4 or scores.shape[0] != len(chunk) or tuple(scores.shape[-2:]) != (
            height_window, width_window
        ):
            raise ValueError(
                f"the predictor must map windows {tuple(crops.shape)} to (N, C, {height_window}, "
                f"{width_window}) scores, got {tuple(scores.shape)}"
            )
        if output is None:
            output = torch.zeros(
                (num_images, scores.shape[1], padded_h, padded_w), dtype=torch.float32, device=images.device
            )
        scores = scores * weights
        for offset, (b, y, x) in enumerate(chunk):
            output[b, :, y:y + height_window, x:x + width_window] += scores[offset]
    # Every image has the same windows: one weight sum serves them all.
    for _, y, x in positions[: len(positions) // num_images]:
        weight_sum[y:y + height_window, x:x + width_window] += weights
    assert output is not None  # at least one window: B >= 1 and both axes >= the window after padding
    output /= weight_sum
    return output[:, :, top:top + height, left:left + width]


def flip_combinations(tta_flips: Any) -> list[tuple[int, ...]]:
    """The flips to average, as tuples of slice axes (0 = height, 1 = width); ``()`` is the unflipped pass.

    Args:
        tta_flips: False / None / [] = no test-time flips (only ``()``); True = every combination
            (``()``, height, width, both); a list of combinations, each an axis name or a list of
            names (``[height, [height, width]]``), added to the unflipped pass.

    Raises:
        ValueError: an unknown axis name or a malformed entry (one line, naming it).
    """
    if tta_flips is None or tta_flips is False:
        return [()]
    if tta_flips is True:
        return [(), (0,), (1,), (0, 1)]
    if isinstance(tta_flips, str) or not isinstance(tta_flips, Sequence):
        raise ValueError(
            f"tta_flips={tta_flips!r} must be true, false or a list of flips such as [height, width, [height, width]]"
        )
    combos: list[tuple[int, ...]] = [()]
    for entry in tta_flips:
        names = [entry] if isinstance(entry, str) else entry
        if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"tta_flips entry {entry!r} must be an axis name ({', '.join(FLIP_AXES)}) or a list of them"
            )
        unknown = [n for n in names if n not in FLIP_AXES]
        if unknown:
            raise ValueError(
                f"tta_flips entry {entry!r}: unknown axis {unknown[0]!r}, expected {' or '.join(FLIP_AXES)}"
            )
        combo = tuple(sorted({FLIP_AXES[n] for n in names}))
        if combo not in combos:
            combos.append(combo)
    return combos


def predict_with_flips(predictor: Predictor, images: torch.Tensor, flips: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Mean of `predictor`'s outputs over flipped copies of `images`, each output flipped back.

    Args:
        predictor: images (B, C_in, H, W) -> class probabilities (B, C, H, W) (averaging
            probabilities, not logits, is what test-time augmentation means by "average").
        images: (B, C_in, H, W).
        flips: slice-axis combinations from `flip_combinations` (``()`` = as is).

    Returns:
        (B, C, H, W) float32, the mean over `flips`.
    """
    if not flips:
        raise ValueError("flips must hold at least one combination (() for the unflipped pass)")
    total: torch.Tensor | None = None
    for combo in flips:
        dims = [axis + 2 for axis in combo]  # slice axes -> tensor axes of (B, C, H, W)
        scores = predictor(images.flip(dims) if dims else images).float()
        scores = scores.flip(dims) if dims else scores
        total = scores if total is None else total + scores
    assert total is not None
    return total / len(flips)


def largest_component_classes(setting: Any, num_classes: int | None = None) -> list[int]:
    """The classes `keep_largest_component` cleans, from `EvalConfig.largest_component`.

    Args:
        setting: False / None / [] = none; True = every foreground class (1..num_classes-1);
            a list of class values.
        num_classes: classes including background; needed for True, and checks a list's range.

    Raises:
        ValueError: a malformed setting or a class outside 1..num_classes-1 (one line, naming it).
    """
    if setting is None or setting is False:
        return []
    if setting is True:
        if num_classes is None:
            raise ValueError("largest_component=true needs the number of classes")
        return list(range(1, num_classes))
    if isinstance(setting, str) or not isinstance(setting, Sequence) or not all(
            isinstance(value, int) and not isinstance(value, bool) for value in setting):
        raise ValueError(f"largest_component={setting!r} must be true, false or a list of class values such as [1, 3]")
    for value in setting:
        if value < 1 or (num_classes is not None and value >= num_classes):
            limit = f"1..{num_classes - 1}" if num_classes is not None else ">= 1"
            raise ValueError(f"largest_component class {value} is not a foreground class ({limit}; 0 is background)")
    return sorted(set(setting))


def keep_largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Labels with each listed class reduced to its largest connected component; the rest becomes 0.

    Components are connected through faces, edges and corners (full connectivity, as MONAI's
    ``KeepLargestConnectedComponent`` and nnU-Net's post-processing by default); ties keep the
    component found first in C order.

    Args:
        labels: integer labels (S, H, W) (or any number of dimensions), 0 = background.
        classes: the class values to clean (`largest_component_classes`).

    Returns:
        A new array of the same shape and dtype (`labels` when nothing is listed).
    """
    if not classes:
        return labels
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    cleaned = labels.copy()
    for value in classes:
        mask = labels == value
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())[1:]  # voxels per component 1..count
        cleaned[mask & (components != int(np.argmax(sizes)) + 1)] = 0
    return cleaned
