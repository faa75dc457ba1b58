"""Volume segmentation metrics: per-class 3D Dice and HD95, in TransUNet's and in the standard convention.

Two conventions are in use and their numbers differ, so every function that reports them says
which one it follows (`MetricMode`):

``"transunet"`` — what TransUNet (and Swin-Unet, SAMed, ...) report on Synapse:
    medpy's ``dc`` and ``hd95`` on the whole 3D volume at **unit spacing** (HD95 in voxels, not
    mm), with TransUNet's empty-mask rules: prediction non-empty and ground truth empty -> (Dice 1,
    HD95 0); prediction empty -> (0, 0) whether or not the ground truth is empty. Case means
    include those zeros.
``"standard"`` — MONAI's ``DiceMetric(ignore_empty=True)`` and ``HausdorffDistanceMetric(percentile=95)``:
    HD95 in mm (voxel spacing given), defined as the **max of the two directed** 95th percentiles
    (medpy pools both directions before taking one percentile, so MONAI's value is >= medpy's);
    Dice is NaN when the ground truth is empty, HD95 is inf when exactly one mask is empty and
    NaN when both are; means skip the non-finite values and say how many were skipped.

Surfaces (both conventions, as medpy and MONAI define them): a mask's surface is
``mask XOR binary_erosion(mask, connectivity-1 cross)``, with everything outside the array
counting as background (so a mask that touches the array border has a surface there). The
surface distance of a voxel of one surface is its Euclidean distance, scaled by the spacing, to
the nearest voxel of the other surface.

Speed: medpy runs two erosions and two exact distance transforms over the *whole* array per
class. Here each class is cropped to the bounding box of the union of its two masks (with a zero
margin), the surfaces are found with shifted array comparisons, and the nearest surface voxel of
the other mask is searched outward from each surface voxel: the integer offsets up to
`SHELL_RADIUS_VOXELS` voxels, sorted by their spacing-scaled length, are tried in that order
(vectorised over the points still unresolved), so a point's first hit is its nearest surface
voxel. Surface distances of a reasonable prediction are a few voxels, so most points resolve in
the first offsets; the few farther away go to a k-d tree (``scipy.spatial.cKDTree``) over the
target surface. All of it is exact:

- Cropping: a voxel next to the crop's edge has its outside neighbour either beyond the array
  (background for medpy too) or outside the union box (background by construction), so the
  erosion gives the same surface; every surface voxel lies in the box, so the nearest one is
  the same.
- Distances: the distance is computed from the integer voxel offset to the nearest surface voxel
  exactly as ``scipy.ndimage.distance_transform_edt`` computes it (offset times spacing,
  squared, summed axis by axis, square root), so it is bit-identical; only an exact tie between
  two offsets whose spacing-scaled lengths differ in the last bit can move a value by one ulp
  (never at unit spacing, where every value is the square root of an exact integer).
- Dice counts come from the same cropped masks: the box holds every voxel of both masks.

The tests compare `hd95` with ``medpy.metric.binary.hd95`` and `dice` with ``medpy.metric.binary.dc``;
``benchmarks/segmentation_metrics.py`` measures the speed-up on a brain volume.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "MetricMode",
    "METRIC_MODES",
    "case_metrics",
    "dice",
    "format_table",
    "hd95",
    "hd95_directed_max",
    "summarize",
    "surface_distances",
    "write_case_csv",
]

MetricMode = Literal["transunet", "standard"]
METRIC_MODES: tuple[str, ...] = ("transunet", "standard")

# The percentile both conventions report.
PERCENTILE = 95.0

# The nearest-surface search tries every offset up to this many voxels (of the finest axis) before
# a k-d tree takes the points still unresolved: ~4,200 offsets at unit spacing in 3D, far beyond
# the 95th percentile of any usable prediction, and small enough to be tried in a few passes.
SHELL_RADIUS_VOXELS = 10
# Unresolved points x offsets looked up per vectorised pass of that search (bounds its memory).
GATHER_BUDGET = 1 << 16


# --------------------------------------------------------------------------------------------------
# Binary masks
# --------------------------------------------------------------------------------------------------


def _as_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of one shape (nonzero = object, as medpy reads them)."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction and ground-truth masks must have one shape, got {pred.shape} and {gt.shape}"
        )
    if pred.ndim == 0:
        raise ValueError("masks must have at least one dimension, got 0-d arrays")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def _spacing_array(spacing: Sequence[float] | float | None, ndim: int) -> np.ndarray:
    """The voxel spacing as a float64 (ndim,) array: None -> ones, a number -> that number on every axis."""
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.size == 1:
        values = np.full(ndim, float(values[0]))
    if values.shape != (ndim,):
        raise ValueError(
            f"spacing must give one value per axis ({ndim}), got {tuple(np.atleast_1d(spacing))}"
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing values must be finite and > 0, got {tuple(values.tolist())}")
    return values


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) that holds every True voxel; None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other) if other else mask)
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _surface(mask: np.ndarray) -> np.ndarray:
    """The surface of a bool mask: mask XOR its connectivity-1 erosion (same shape, bool).

    Beyond the array is background (scipy's ``binary_erosion(border_value=0)``, as medpy and
    MONAI use it): a voxel stays in the erosion only if it and its 2 * ndim face neighbours,
    all inside the array, are in the mask. Shifted comparisons do it in a few array passes.
    """
    eroded = mask.copy()
    for axis in range(mask.ndim):
        def along(part: slice, axis: int = axis) -> tuple[slice, ...]:
            return tuple(part if a == axis else slice(None) for a in range(mask.ndim))

        eroded[along(slice(1, None))] &= mask[along(slice(None, -1))]
        eroded[along(slice(None, -1))] &= mask[along(slice(1, None))]
        eroded[along(slice(0, 1))] = False  # the neighbour beyond the array is background
        eroded[along(slice(-1, None))] = False
    return mask & ~eroded


def _edt_lengths(offsets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Lengths (N,) float64 of integer offsets (N, ndim), computed as scipy's EDT computes a distance.

    (offset as float64) times the spacing, squared, summed over the axes in order, square root.
    """
    scaled = offsets.astype(np.float64) * spacing
    squared = scaled * scaled
    total = squared[:, 0].copy()
    for axis in range(1, squared.shape[1]):
        total += squared[:, axis]
    return np.sqrt(total)


@functools.lru_cache(maxsize=16)
def _search_offsets(spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The offsets of the nearest-surface search for one spacing, nearest first.

    Returns:
        ``(offsets, lengths, reach)``: int64 (K, ndim) every offset whose scaled length is at most
        `SHELL_RADIUS_VOXELS` times the finest spacing (the zero offset first), float64 (K,) their
        lengths (`_edt_lengths`), ascending, and per axis the largest offset (the margin a padded
        box needs).
    """
    values = np.asarray(spacing, dtype=np.float64)
    radius = SHELL_RADIUS_VOXELS * float(values.min())
    reach = tuple(int(math.ceil(radius / v)) for v in values)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    lengths = _edt_lengths(offsets, values)
    keep = lengths <= radius
    offsets, lengths = offsets[keep], lengths[keep]
    order = np.argsort(lengths, kind="stable")
    offsets, lengths = offsets[order], lengths[order]
    offsets.flags.writeable = False
    lengths.flags.writeable = False
    return offsets, lengths, reach


def _nearest_distances(
    sources: np.ndarray, target: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """Distance (float64 (N,)) from each source voxel to the nearest True voxel of `target`.

    Args:
        sources: (N,) flat indices into `target` of the voxels to measure from.
        target: bool padded box (its margin on each axis at least the search reach, all False).
        offsets: int64 (K, ndim) search offsets, ascending by `lengths` (`_search_offsets`).
        lengths: float64 (K,) their lengths.
        spacing: (ndim,) float64.

    ``target`` must hold at least one True voxel.
    """
    shape = target.shape
    strides = np.array([int(np.prod(shape[axis + 1:])) for axis in range(len(shape))], dtype=np.int64)
    flat_offsets = offsets @ strides
    flat_target = target.reshape(-1)
    distances = np.empty(len(sources), dtype=np.float64)
    pending = np.arange(len(sources))
    positions = sources.astype(np.int64, copy=False)
    first, count = 0, len(flat_offsets)
    while pending.size and first < count:
        # A point's first hit in offset order is its nearest target voxel; a pass tries `step`
        # offsets on every unresolved point, more at once as fewer points remain.
        step = max(1, min(count - first, GATHER_BUDGET // pending.size))
        if step == 1:
            hit = flat_target[positions + flat_offsets[first]]
            distances[pending[hit]] = lengths[first]
        else:
            hits = flat_target[positions[:, None] + flat_offsets[None, first:first + step]]
            column = hits.argmax(axis=1)  # the first True of a row (0 when there is none)
            hit = hits[np.arange(len(column)), column]
            distances[pending[hit]] = lengths[first + column[hit]]
        pending, positions = pending[~hit], positions[~hit]
        first += step
    if pending.size:
        # Farther than the search radius: the nearest of all target voxels, with a k-d tree.
        points = np.stack(np.unravel_index(positions, shape), axis=1)
        target_points = np.argwhere(target)
        _, nearest = cKDTree(target_points * spacing).query(points * spacing, k=1)
        distances[pending] = _edt_lengths(target_points[nearest] - points, spacing)
    return distances


def _padded_shape(shape: Sequence[int], reach: Sequence[int]) -> tuple[int, ...]:
    return tuple(n + 2 * r for n, r in zip(shape, reach, strict=True))


def _inner(shape: Sequence[int], reach: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(r, r + n) for n, r in zip(shape, reach, strict=True))


def _padded_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pred surface -> gt surface, gt surface -> pred surface) of two non-empty masks in a zero-padded box."""
    pred_surface = _surface(pred)
    gt_surface = _surface(gt)
    pred_points = np.flatnonzero(pred_surface)
    gt_points = np.flatnonzero(gt_surface)
    return (
        _nearest_distances(pred_points, gt_surface, offsets, lengths, spacing),
        _nearest_distances(gt_points, pred_surface, offsets, lengths, spacing),
    )


def _surface_distances_in_box(
    pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pred surface -> gt surface, gt surface -> pred surface) distances of two non-empty cropped masks."""
    offsets, lengths, reach = _search_offsets(tuple(float(v) for v in spacing))
    padded_pred = np.zeros(_padded_shape(pred.shape, reach), dtype=bool)
    padded_gt = np.zeros_like(padded_pred)
    inner = _inner(pred.shape, reach)
    padded_pred[inner] = pred
    padded_gt[inner] = gt
    return _padded_distances(padded_pred, padded_gt, spacing, offsets, lengths)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The two directed sets of surface distances between two masks.

    Args:
        pred: prediction mask, any shape (nonzero = object).
        gt: ground-truth mask of the same shape.
        spacing: voxel size per axis (any unit; the distances come out in it); None = 1 per axis.

    Returns:
        ``(pred_to_gt, gt_to_pred)``: float64 arrays, one distance per surface voxel of ``pred``
        (to the nearest surface voxel of ``gt``) and of ``gt`` (to ``pred``), in no particular order.

    Raises:
        ValueError: when either mask is empty (no surface to measure from or to).
    """
    pred, gt = _as_mask_pair(pred, gt)
    spacing_values = _spacing_array(spacing, pred.ndim)
    pred_box = _bounding_box(pred)
    gt_box = _bounding_box(gt)
    if pred_box is None:
        raise ValueError("the prediction mask is empty: surface distances need a voxel in both masks")
    if gt_box is None:
        raise ValueError("the ground-truth mask is empty: surface distances need a voxel in both masks")
    box = _union_box(pred_box, gt_box)
    return _surface_distances_in_box(pred[box], gt[box], spacing_values)


# --------------------------------------------------------------------------------------------------
# Per-mask metrics
# --------------------------------------------------------------------------------------------------


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|A∩B| / (|A| + |B|) of two masks, as ``medpy.metric.binary.dc``: 1.0 when both are empty.

    (medpy documents 1.0 for two empty masks; medpy 0.5.2 under numpy 2 actually returns NaN there,
    because its counts are numpy integers and the ``ZeroDivisionError`` it catches is never raised.)

    Args:
        pred: prediction mask, any shape (nonzero = object).
        gt: ground-truth mask of the same shape.
    """
    pred, gt = _as_mask_pair(pred, gt)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / float(total)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None) -> float:
    """95th percentile of the symmetric surface distance, exactly as ``medpy.metric.binary.hd95``.

    The distances of both directions are pooled into one set before the percentile (numpy's
    linear interpolation), which is medpy's (and TransUNet's) definition.

    Args:
        pred: prediction mask, any shape (nonzero = object).
        gt: ground-truth mask of the same shape.
        spacing: voxel size per axis; None = unit spacing (the distance is then in voxels).

    Raises:
        ValueError: when either mask is empty (medpy raises RuntimeError there).
    """
    forward, backward = surface_distances(pred, gt, spacing)
    return float(np.percentile(np.concatenate((forward, backward)), PERCENTILE))


def hd95_directed_max(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None
) -> float:
    """MONAI's HD95: the larger of the two directed 95th percentiles of the surface distances.

    Same surfaces and distances as `hd95`; only the reduction differs (MONAI's
    ``compute_hausdorff_distance(percentile=95)``), and the result is always >= `hd95`'s.

    Args:
        pred: prediction mask, any shape (nonzero = object).
        gt: ground-truth mask of the same shape.
        spacing: voxel size per axis (mm for the standard convention); None = unit spacing.

    Raises:
        ValueError: when either mask is empty (MONAI returns inf or NaN there; `case_metrics` does too).
    """
    forward, backward = surface_distances(pred, gt, spacing)
    return float(max(np.percentile(forward, PERCENTILE), np.percentile(backward, PERCENTILE)))


# --------------------------------------------------------------------------------------------------
# Label volumes
# --------------------------------------------------------------------------------------------------


def _check_label_volume(volume: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.dtype == bool or not np.issubdtype(volume.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label volume, got dtype {volume.dtype}")
    if volume.size and (volume.min() < 0 or volume.max() >= num_classes):
        raise ValueError(
            f"{name} values must lie in [0, {num_classes}), got min {volume.min()} and max {volume.max()}"
        )
    return volume


def case_metrics(
    prediction: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    mode: MetricMode = "transunet",
    spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and HD95 of one case (whole volume, not slice by slice).

    Args:
        prediction: int (S, H, W) predicted labels in [0, num_classes) (any number of axes works).
        label: int (S, H, W) ground-truth labels, same shape.
        num_classes: C, background (0) included.
        mode: ``"transunet"`` (unit spacing whatever ``spacing`` says, medpy's pooled HD95,
            TransUNet's empty rules) or ``"standard"`` (spacing in mm, MONAI's directed-max HD95,
            NaN/inf for empty masks); see the module docstring.
        spacing: voxel size along (S, H, W), used by ``"standard"`` only; None = 1 per axis.

    Returns:
        ``(dice, hd95)``: float64 arrays of shape (C-1,), entry k for class k+1. Empty masks:

        ============================  ===================  =========================
        prediction / ground truth     transunet            standard
        ============================  ===================  =========================
        both non-empty                (dc, hd95)           (dc, directed-max hd95)
        non-empty / empty             (1, 0)               (NaN, inf)
        empty / non-empty             (0, 0)               (0, inf)
        both empty                    (0, 0)               (NaN, NaN)
        ============================  ===================  =========================
    """
    if mode not in METRIC_MODES:
        raise ValueError(f"mode must be one of {METRIC_MODES}, got {mode!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + one class), got {num_classes}")
    prediction = _check_label_volume(prediction, "prediction", num_classes)
    label = _check_label_volume(label, "label", num_classes)
    if prediction.shape != label.shape:
        raise ValueError(
            f"prediction and label must have one shape, got {prediction.shape} and {label.shape}"
        )
    if prediction.ndim == 0:
        raise ValueError("prediction and label must have at least one axis, got 0-d arrays")
    spacing_values = (
        np.ones(prediction.ndim) if mode == "transunet" else _spacing_array(spacing, prediction.ndim)
    )

    offsets, lengths, reach = _search_offsets(tuple(float(v) for v in spacing_values))
    # One pass for every class's bounding box (find_objects: index k-1 holds label k's box, None if absent).
    pred_boxes = ndimage.find_objects(prediction, max_label=num_classes - 1)
    gt_boxes = ndimage.find_objects(label, max_label=num_classes - 1)

    dice_values = np.zeros(num_classes - 1, dtype=np.float64)
    hd_values = np.zeros(num_classes - 1, dtype=np.float64)
    for index, cls in enumerate(range(1, num_classes)):
        pred_box, gt_box = pred_boxes[cls - 1], gt_boxes[cls - 1]
        if pred_box is not None and gt_box is not None:
            # Both masks, cropped to their union box, written into zero-padded boxes (the margin
            # the nearest-surface search reaches into); the box holds every voxel of both.
            box = _union_box(pred_box, gt_box)
            shape = tuple(s.stop - s.start for s in box)
            inner = _inner(shape, reach)
            pred_mask = np.zeros(_padded_shape(shape, reach), dtype=bool)
            gt_mask = np.zeros_like(pred_mask)
            np.equal(prediction[box], cls, out=pred_mask[inner])
            np.equal(label[box], cls, out=gt_mask[inner])
            n_pred, n_gt = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(gt_mask))
            overlap = int(np.count_nonzero(pred_mask & gt_mask))
            dice_values[index] = 2.0 * overlap / float(n_pred + n_gt)
            forward, backward = _padded_distances(pred_mask, gt_mask, spacing_values, offsets, lengths)
            if mode == "transunet":
                hd_values[index] = np.percentile(np.concatenate((forward, backward)), PERCENTILE)
            else:
                hd_values[index] = max(
                    np.percentile(forward, PERCENTILE), np.percentile(backward, PERCENTILE)
                )
        elif mode == "transunet":
            # TransUNet's calculate_metric_percase: a prediction with no ground truth scores (1, 0);
            # no prediction scores (0, 0), even when the ground truth is empty too.
            dice_values[index] = 1.0 if pred_box is not None else 0.0
            hd_values[index] = 0.0
        else:
            # MONAI: Dice ignores an empty ground truth (NaN); HD95 is inf with one empty mask, NaN with both.
            dice_values[index] = math.nan if gt_box is None else 0.0
            hd_values[index] = math.nan if pred_box is None and gt_box is None else math.inf
    return dice_values, hd_values


# --------------------------------------------------------------------------------------------------
# Over cases
# --------------------------------------------------------------------------------------------------


def summarize(
    dice: np.ndarray, hd95: np.ndarray, class_names: Sequence[str], mode: MetricMode
) -> dict[str, float]:
    """Per-class means over cases and their mean over classes.

    Args:
        dice: float (num_cases, C-1), rows from `case_metrics`.
        hd95: float (num_cases, C-1), same layout.
        class_names: the C-1 foreground class names, in class order.
        mode: ``"transunet"``: plain mean over all cases, TransUNet's zeros included (its
            ``metric_list / len(testloader)``); ``"standard"``: mean over the finite values only
            (NaN and inf skipped), a class with none gives NaN.

    Returns:
        ``{"mean_dice", "mean_hd95", "dice/<name>", "hd95/<name>"}`` for every name, and for
        ``"standard"`` also ``"excluded/<name>"``: the number of cases in which the class's Dice or
        HD95 (or both) was non-finite and left out, i.e. the cases where one of its masks was
        empty. ``mean_*`` average the per-class means (macro, as the per-class columns of a
        results table), skipping NaN class means.
    """
    if mode not in METRIC_MODES:
        raise ValueError(f"mode must be one of {METRIC_MODES}, got {mode!r}")
    dice = np.asarray(dice, dtype=np.float64)
    hd95 = np.asarray(hd95, dtype=np.float64)
    names = list(class_names)
    if dice.ndim != 2 or dice.shape != hd95.shape or dice.shape[1] != len(names):
        raise ValueError(
            f"dice and hd95 must both be (num_cases, {len(names)}) for {len(names)} class names, "
            f"got {dice.shape} and {hd95.shape}"
        )
    summary: dict[str, float] = {}
    if mode == "transunet":
        dice_means = dice.mean(axis=0) if dice.shape[0] else np.full(len(names), math.nan)
        hd_means = hd95.mean(axis=0) if hd95.shape[0] else np.full(len(names), math.nan)
    else:
        dice_finite = np.isfinite(dice)
        hd_finite = np.isfinite(hd95)
        dice_means = _finite_mean(dice, dice_finite)
        hd_means = _finite_mean(hd95, hd_finite)
    summary["mean_dice"] = _mean_of_finite(dice_means)
    summary["mean_hd95"] = _mean_of_finite(hd_means)
    for k, name in enumerate(names):
        summary[f"dice/{name}"] = float(dice_means[k])
        summary[f"hd95/{name}"] = float(hd_means[k])
    if mode == "standard":
        for k, name in enumerate(names):
            summary[f"excluded/{name}"] = float((~(dice_finite[:, k] & hd_finite[:, k])).sum())
    return summary


def _finite_mean(values: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Column means over the finite entries only; NaN for a column with none."""
    counts = finite.sum(axis=0)
    sums = np.where(finite, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)


def _mean_of_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def write_case_csv(
    path: str | os.PathLike,
    cases: Sequence[str],
    dice: np.ndarray,
    hd95: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """One row per case: ``case, dice/<name>..., hd95/<name>...`` (NaN and inf written as ``nan``/``inf``).

    Args:
        path: the CSV file to write (its folder is created).
        cases: case ids, one per row of ``dice``.
        dice: float (num_cases, C-1).
        hd95: float (num_cases, C-1).
        class_names: the C-1 foreground class names.
    """
    dice = np.asarray(dice, dtype=np.float64)
    hd95 = np.asarray(hd95, dtype=np.float64)
    names = list(class_names)
    expected = (len(cases), len(names))
    if dice.shape != expected or hd95.shape != expected:
        raise ValueError(
            f"dice and hd95 must be (num_cases, num_classes - 1) = {expected}, "
            f"got {dice.shape} and {hd95.shape}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", *(f"dice/{n}" for n in names), *(f"hd95/{n}" for n in names)])
        for row, case in enumerate(cases):
            writer.writerow(
                [case, *(repr(float(v)) for v in dice[row]), *(repr(float(v)) for v in hd95[row])]
            )


def format_table(summary: dict[str, float], class_names: Sequence[str]) -> str:
    """A fixed-width per-class table of a `summarize` result (Dice in %, HD95 as given), mean row last.

    An ``excluded`` column appears when the summary has ``excluded/<name>`` entries (standard mode).
    """
    names = list(class_names)
    with_excluded = any(f"excluded/{n}" in summary for n in names)
    width = max([len("class"), len("mean"), *(len(n) for n in names)])
    header = f"{'class':<{width}}  {'Dice %':>8}  {'HD95':>9}"
    if with_excluded:
        header += f"  {'excluded':>8}"
    lines = [header, "-" * len(header)]

    def row(name: str, dice_value: float, hd_value: float, excluded: float | None) -> str:
        text = f"{name:<{width}}  {dice_value * 100:>8.2f}  {hd_value:>9.2f}"
        if with_excluded:
            text += f"  {'' if excluded is None else int(excluded):>8}"
        return text

    for name in names:
        lines.append(
            row(name, summary[f"dice/{name}"], summary[f"hd95/{name}"], summary.get(f"excluded/{name}", 0.0))
        )
    lines.append("-" * len(header))
    lines.append(row("mean", summary["mean_dice"], summary["mean_hd95"], None))
    return "\n".join(lines)
