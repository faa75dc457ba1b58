"""Time per volume of our per-class Dice + HD95 against a medpy loop, on a real 181×217×181 brain.

Ground truth: the 8 AAL lobes of Debian `mricron-data` (the classes of the MRI-lobe demo set),
as an (S, H, W) = (Z, X, Y) volume. Prediction: a realistic imperfect segmentation of it, the
whole map shifted by a voxel or two along every axis, two classes dilated into the background,
two eroded. Without the templates a synthetic 8-class volume of the same size is used.

Both sides compute TransUNet's per-case metric (``case_metrics(mode="transunet")``): the medpy
side is the loop TransUNet runs (``medpy.metric.binary.dc`` and ``hd95`` per class, unit
spacing, its empty-mask rules). The script asserts the numbers are bit-equal and prints the
median time per volume of each and the ratio (target >= 20x). Runs interleave (ours, medpy,
medpy, ours, ...) so machine noise hits both alike.

Usage:
    python benchmarks/segmentation_metrics.py               # 1 run of each, under a minute on 2 cores
    python benchmarks/segmentation_metrics.py --repeats 3   # median of 3 (medpy takes 15-40 s a volume)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vit_segmentation.metrics import case_metrics
from vit_segmentation.prepare import DEBIAN_MRICRON_TEMPLATES, lobe_label_map, read_aal_table

NUM_CLASSES = 9
TARGET_RATIO = 20.0


def lobe_volume(templates: Path) -> np.ndarray | None:
    """The AAL lobe map as int64 (Z, X, Y), classes 0..8; None when the templates are absent."""
    atlas_path, table_path = templates / "aal.nii.gz", templates / "aal.nii.txt"
    if not (atlas_path.is_file() and table_path.is_file()):
        return None
    lookup, _ = lobe_label_map(read_aal_table(table_path), str(table_path))
    atlas = np.asarray(nib.load(str(atlas_path)).dataobj)
    return np.ascontiguousarray(np.moveaxis(lookup[atlas], 2, 0))


def synthetic_volume(shape: tuple[int, int, int] = (181, 181, 217), seed: int = 0) -> np.ndarray:
    """Eight smooth random regions filling an ellipsoid 'head', int64 (S, H, W)."""
    rng = np.random.default_rng(seed)
    coarse_shape = (23, 23, 28)
    factors = [full / small for full, small in zip(shape, coarse_shape, strict=True)]
    best = np.full(shape, -np.inf, dtype=np.float32)
    label = np.zeros(shape, dtype=np.int64)
    for cls in range(1, NUM_CLASSES):  # a running argmax of smooth random fields, one class at a time
        coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 3.0)
        field = ndimage.zoom(coarse, factors, order=1, output=np.float32, grid_mode=True, mode="nearest")
        wins = field > best
        best[wins], label[wins] = field[wins], cls
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    radius = sum(((g - n / 2) / (0.45 * n)) ** 2 for g, n in zip(grid, shape, strict=True))
    label[radius > 1.0] = 0
    return label


def perturbed(label: np.ndarray) -> np.ndarray:
    """A realistic prediction: shifted by (1, -2, 1) voxels, classes 2 and 6 dilated, 5 and 8 eroded."""
    prediction = np.roll(label, (1, -2, 1), axis=(0, 1, 2))
    for cls in (2, 6):  # grow into the background only
        grown = ndimage.binary_dilation(prediction == cls, iterations=2)
        prediction[grown & (prediction == 0)] = cls
    for cls in (5, 8):
        mask = prediction == cls
        prediction[mask & ~ndimage.binary_erosion(mask)] = 0
    return prediction


def medpy_case(prediction: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TransUNet's calculate_metric_percase loop, with medpy."""
    from medpy.metric import binary

    dice_values, hd_values = np.zeros(NUM_CLASSES - 1), np.zeros(NUM_CLASSES - 1)
    for cls in range(1, NUM_CLASSES):
        pred, gt = prediction == cls, label == cls
        if pred.sum() > 0 and gt.sum() > 0:
            dice_values[cls - 1], hd_values[cls - 1] = binary.dc(pred, gt), binary.hd95(pred, gt)
        elif pred.sum() > 0:
            dice_values[cls - 1] = 1.0
    return dice_values, hd_values


def timed(function, *args) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side (median reported)")
    parser.add_argument("--templates", type=Path, default=DEBIAN_MRICRON_TEMPLATES)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    label = lobe_volume(args.templates)
    source = f"AAL lobes from {args.templates}"
    if label is None:
        label, source = synthetic_volume(), "synthetic 8 regions (mricron-data templates absent)"
    prediction = perturbed(label)
    print(f"volume: {source}, (S, H, W) = {label.shape}, {NUM_CLASSES - 1} classes, transunet mode")

    ours_times, medpy_times = [], []
    for repeat in range(args.repeats):
        order = [("ours", case_metrics), ("medpy", medpy_case)]
        for name, function in order if repeat % 2 == 0 else order[::-1]:
            arguments = (prediction, label, NUM_CLASSES) if name == "ours" else (prediction, label)
            seconds, result = timed(function, *arguments)
            (ours_times if name == "ours" else medpy_times).append(seconds)
            if name == "ours":
                ours = result
            else:
                reference = result

    np.testing.assert_array_equal(ours[0], reference[0])  # bit-equal, not merely close
    np.testing.assert_array_equal(ours[1], reference[1])
    print(f"{'class':>5}  {'Dice':>8}  {'HD95 (vox)':>10}  {'|diff| vs medpy':>15}")
    for k in range(NUM_CLASSES - 1):
        diff = max(abs(ours[0][k] - reference[0][k]), abs(ours[1][k] - reference[1][k]))
        print(f"{k + 1:>5}  {ours[0][k]:>8.4f}  {ours[1][k]:>10.4f}  {diff:>15.1e}")
    ours_median, medpy_median = statistics.median(ours_times), statistics.median(medpy_times)
    ratio = medpy_median / ours_median
    print(f"ours : {ours_median:7.3f} s per volume (median of {args.repeats})")
    print(f"medpy: {medpy_median:7.3f} s per volume (median of {args.repeats})")
    verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"speed-up: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x) {verdict}")
    seconds, _ = timed(case_metrics, prediction, label, NUM_CLASSES, "standard", (1.0, 1.0, 1.0))
    print(f"ours, standard mode (MONAI directed-max HD95, NaN/inf rules): {seconds:.3f} s per volume")


if __name__ == "__main__":
    main()
