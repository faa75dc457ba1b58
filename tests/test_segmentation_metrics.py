"""Segmentation metrics against medpy (Dice, pooled HD95) and a brute-force MONAI-style directed-max HD95."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import ndimage

from vit_segmentation.metrics import (
    case_metrics,
    dice,
    format_table,
    hd95,
    hd95_directed_max,
    summarize,
    surface_distances,
    write_case_csv,
)

binary = pytest.importorskip("medpy.metric.binary", reason="medpy (a dev dependency) is the reference")


def _blob(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 2.0, level: float = 0.3
) -> np.ndarray:
    """A random smooth blob mask (several lumps, holes and thin parts happen)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > level * field.std()


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels by definition: mask voxels with a face neighbour outside the mask (or the array)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis=axis) & np.roll(padded, -1, axis=axis)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    return np.argwhere(mask & ~interior[core])


def _brute_directed(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """For each surface voxel of a, the distance to the nearest surface voxel of b (all pairs)."""
    pa, pb = _brute_surface(a) * spacing, _brute_surface(b) * spacing
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


# --------------------------------------------------------------------------------------------------
# dice / hd95 against medpy
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_hd95_and_dice_equal_medpy_on_random_3d_blobs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (22, 26, 18)
    pred, gt = _blob(rng, shape), _blob(rng, shape)
    assert pred.any() and gt.any()
    assert hd95(pred, gt) == pytest.approx(binary.hd95(pred, gt), abs=1e-9)
    assert dice(pred, gt) == binary.dc(pred, gt)


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.9), (0.5, 3.0, 1.1), (1.0, 1.0, 4.0)])
def test_hd95_equals_medpy_with_anisotropic_spacing(spacing: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(7)
    gt = _blob(rng, (16, 30, 24))
    # A realistic prediction: the ground truth shifted and partly dilated, plus a stray lump.
    pred = np.roll(gt, (1, -2, 1), axis=(0, 1, 2))
    pred[:, :15] = ndimage.binary_dilation(pred[:, :15])
    pred[2:4, 25:28, 2:5] = True
    expected = binary.hd95(pred, gt, voxelspacing=spacing)
    assert hd95(pred, gt, spacing) == pytest.approx(expected, abs=1e-9)
    assert hd95(gt, pred, spacing) == pytest.approx(expected, abs=1e-9)  # symmetric


def test_hd95_equals_medpy_for_masks_touching_the_array_border() -> None:
    rng = np.random.default_rng(3)
    gt = _blob(rng, (20, 20, 20), level=-0.2)  # large: it fills the array up to its faces
    pred = gt.copy()
    pred[:, :, :3] = True  # a full slab on one face
    pred[0] = False
    pred[-1, :5, :5] = True
    for a, b in ((pred, gt), (gt, pred)):
        assert hd95(a, b) == pytest.approx(binary.hd95(a, b), abs=1e-9)
        assert hd95(a, b, (1.5, 0.5, 2.0)) == pytest.approx(
            binary.hd95(a, b, voxelspacing=(1.5, 0.5, 2.0)), abs=1e-9
        )
    full = np.ones((6, 7, 8), dtype=bool)  # the whole array: its surface is the array's faces
    corner = np.zeros_like(full)
    corner[0, 0, 0] = True
    assert hd95(full, corner) == pytest.approx(binary.hd95(full, corner), abs=1e-9)


def test_hd95_single_voxels_and_2d() -> None:
    a = np.zeros((9, 11, 13), dtype=bool)
    b = np.zeros_like(a)
    a[2, 3, 4] = True
    b[7, 1, 12] = True
    assert hd95(a, b) == pytest.approx(binary.hd95(a, b), abs=1e-12)
    assert hd95(a, b, (2.0, 1.0, 0.5)) == pytest.approx(math.sqrt(10.0**2 + 2.0**2 + 4.0**2), abs=1e-12)
    assert hd95(a, a) == 0.0
    rng = np.random.default_rng(11)
    p2, g2 = _blob(rng, (40, 35)), _blob(rng, (40, 35))
    assert hd95(p2, g2) == pytest.approx(binary.hd95(p2, g2), abs=1e-9)


def test_dice_equals_medpy_including_empty_masks() -> None:
    rng = np.random.default_rng(5)
    a, b = _blob(rng, (10, 12, 14)), _blob(rng, (10, 12, 14))
    empty = np.zeros_like(a)
    for x, y in ((a, b), (a, empty), (empty, b), (a, a)):
        assert dice(x, y) == binary.dc(x, y)
    # medpy documents 1.0 for two empty masks (its `except ZeroDivisionError`); with numpy 2 the
    # counts are numpy integers, the division gives NaN instead and that branch never runs.
    assert dice(empty, empty) == 1.0


def _medpy_distances(pred: np.ndarray, gt: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """medpy's own two directed surface-distance sets (its private helper, which hd95 pools)."""
    directed = getattr(binary, "__surface_distances")
    return directed(pred, gt, spacing, 1), directed(gt, pred, spacing, 1)


@pytest.mark.parametrize("gap", [3, 14, 30])
def test_surface_distances_are_bit_equal_to_medpy_near_and_beyond_the_search_radius(gap: int) -> None:
    # A blob and a shifted copy plus a stray lump `gap` voxels away: the lump's distances lie
    # beyond the offset search for gap >= 14 and are found by the k-d tree fallback.
    rng = np.random.default_rng(gap)
    gt = np.zeros((24, 70, 30), dtype=bool)
    gt[:, :30] = _blob(rng, (24, 30, 30))
    pred = np.roll(gt, (1, -1, 2), axis=(0, 1, 2))
    pred[10:13, 30 + gap:33 + gap, 12:15] = True
    ours = surface_distances(pred, gt)
    theirs = _medpy_distances(pred, gt)
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.sort(mine), np.sort(reference))
    assert hd95(pred, gt) == binary.hd95(pred, gt)
    labels_pred, labels_gt = pred.astype(np.uint8), gt.astype(np.int64)
    assert case_metrics(labels_pred, labels_gt, 2)[1][0] == binary.hd95(pred, gt)


def test_surface_distances_with_anisotropic_spacing_beyond_the_search_radius() -> None:
    rng = np.random.default_rng(21)
    gt = np.zeros((16, 60, 24), dtype=bool)
    gt[:, :24] = _blob(rng, (16, 24, 24))
    pred = gt.copy()
    pred[4:6, 50:53, 5:8] = True  # ~26 voxels along the fine axis: past the search radius
    spacing = (3.0, 0.6, 0.8)
    ours = surface_distances(pred, gt, spacing)
    theirs = _medpy_distances(pred, gt, spacing)
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(np.sort(mine), np.sort(reference), rtol=1e-15, atol=0)


def test_hd95_rejects_empty_masks_and_shape_mismatch() -> None:
    a = np.zeros((5, 5, 5), dtype=bool)
    b = a.copy()
    b[1, 1, 1] = True
    with pytest.raises(ValueError, match="prediction mask is empty"):
        hd95(a, b)
    with pytest.raises(ValueError, match="ground-truth mask is empty"):
        hd95_directed_max(b, a)
    with pytest.raises(ValueError, match="one shape"):
        hd95(b, b[:4])
    with pytest.raises(ValueError, match="spacing"):
        hd95(b, b, (1.0, 1.0))


# --------------------------------------------------------------------------------------------------
# MONAI's directed max, against brute force
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,spacing", [(0, (1.0, 1.0, 1.0)), (1, (2.0, 0.6, 0.8)), (2, (0.9, 1.7, 3.0))])
def test_directed_max_and_pooled_hd95_equal_brute_force(
    seed: int, spacing: tuple[float, float, float]
) -> None:
    rng = np.random.default_rng(seed)
    pred, gt = _blob(rng, (12, 14, 10)), _blob(rng, (12, 14, 10))
    s = np.asarray(spacing)
    forward, backward = _brute_directed(pred, gt, s), _brute_directed(gt, pred, s)
    expected_max = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assert hd95_directed_max(pred, gt, spacing) == pytest.approx(expected_max, abs=1e-9)
    assert hd95(pred, gt, spacing) == pytest.approx(
        np.percentile(np.concatenate([forward, backward]), 95), abs=1e-9
    )
    ours_forward, ours_backward = surface_distances(pred, gt, spacing)
    np.testing.assert_allclose(np.sort(ours_forward), np.sort(forward), atol=1e-9)
    np.testing.assert_allclose(np.sort(ours_backward), np.sort(backward), atol=1e-9)
    assert hd95_directed_max(pred, gt, spacing) >= hd95(pred, gt, spacing) - 1e-12


# --------------------------------------------------------------------------------------------------
# case_metrics: both conventions, every empty case
# --------------------------------------------------------------------------------------------------


def _case_volumes() -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label), int (S, H, W), 6 classes.

    Classes 1-2 in both, 3 predicted only, 4 in the label only, 5 in neither.
    """
    rng = np.random.default_rng(0)
    shape = (14, 24, 20)
    label = np.zeros(shape, dtype=np.int64)
    prediction = np.zeros(shape, dtype=np.int64)
    label[_blob(rng, shape, level=1.0)] = 1
    label[2:9, 3:12, 11:18] = 2
    prediction[np.roll(label == 1, 1, axis=1)] = 1
    prediction[3:9, 4:13, 10:17] = 2
    prediction[0, 0, 0:3] = 3  # a false positive class touching the border
    label[10:13, 20:23, 2:5] = 4  # missed entirely
    return prediction, label


def test_case_metrics_transunet_rules_match_medpy_loop() -> None:
    prediction, label = _case_volumes()
    dice_values, hd_values = case_metrics(prediction, label, num_classes=6, mode="transunet")
    assert dice_values.shape == hd_values.shape == (5,) and dice_values.dtype == np.float64
    for cls in (1, 2):
        p, g = prediction == cls, label == cls
        assert dice_values[cls - 1] == binary.dc(p, g)
        assert hd_values[cls - 1] == pytest.approx(binary.hd95(p, g), abs=1e-9)
    assert (dice_values[2], hd_values[2]) == (1.0, 0.0)  # prediction, no ground truth
    assert (dice_values[3], hd_values[3]) == (0.0, 0.0)  # missed: ground truth, no prediction
    assert (dice_values[4], hd_values[4]) == (0.0, 0.0)  # neither
    # Unit spacing whatever is passed.
    again = case_metrics(prediction, label, num_classes=6, mode="transunet", spacing=(5.0, 0.5, 0.5))
    np.testing.assert_array_equal(again[1], hd_values)


def test_case_metrics_standard_rules_and_spacing() -> None:
    prediction, label = _case_volumes()
    spacing = (3.0, 0.8, 0.8)
    dice_values, hd_values = case_metrics(prediction, label, num_classes=6, mode="standard", spacing=spacing)
    for cls in (1, 2):
        p, g = prediction == cls, label == cls
        assert dice_values[cls - 1] == binary.dc(p, g)
        assert hd_values[cls - 1] == pytest.approx(hd95_directed_max(p, g, spacing), abs=1e-12)
        assert hd_values[cls - 1] >= binary.hd95(p, g, voxelspacing=spacing) - 1e-9
    assert math.isnan(dice_values[2]) and math.isinf(hd_values[2])  # prediction only
    assert dice_values[3] == 0.0 and math.isinf(hd_values[3])  # ground truth only
    assert math.isnan(dice_values[4]) and math.isnan(hd_values[4])  # neither
    unit = case_metrics(prediction, label, num_classes=6, mode="standard")
    p, g = prediction == 1, label == 1
    assert unit[1][0] == pytest.approx(hd95_directed_max(p, g), abs=1e-12)


def test_case_metrics_memory_order_and_dtypes_do_not_matter() -> None:
    prediction, label = _case_volumes()
    reference = case_metrics(prediction, label, 6)
    for p, g in (
        (np.asfortranarray(prediction), np.asfortranarray(label)),
        (np.asfortranarray(prediction), label),
        (prediction.astype(np.uint8), label.astype(np.int16)),
    ):
        result = case_metrics(p, g, 6)
        np.testing.assert_array_equal(result[0], reference[0])
        np.testing.assert_array_equal(result[1], reference[1])


def test_case_metrics_rejects_bad_volumes() -> None:
    prediction, label = _case_volumes()
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 4\), got min 0 and max 4"):
        case_metrics(np.clip(prediction, 0, 3), label, num_classes=4)
    with pytest.raises(ValueError, match="prediction must be an integer label volume"):
        case_metrics(prediction.astype(np.float32), label, num_classes=6)
    with pytest.raises(ValueError, match="one shape"):
        case_metrics(prediction[:5], label, num_classes=6)
    with pytest.raises(ValueError, match="mode must be one of"):
        case_metrics(prediction, label, num_classes=6, mode="monai")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# summaries and files
# --------------------------------------------------------------------------------------------------

NAMES = ("aorta", "liver")


def test_summarize_transunet_is_a_plain_mean_with_zeros() -> None:
    dice_values = np.array([[0.9, 0.0], [0.7, 1.0], [0.8, 0.5]])
    hd_values = np.array([[2.0, 0.0], [4.0, 0.0], [6.0, 3.0]])
    summary = summarize(dice_values, hd_values, NAMES, "transunet")
    assert summary["dice/aorta"] == pytest.approx(0.8)
    assert summary["dice/liver"] == pytest.approx(0.5)
    assert summary["hd95/aorta"] == pytest.approx(4.0)
    assert summary["hd95/liver"] == pytest.approx(1.0)
    assert summary["mean_dice"] == pytest.approx(0.65)
    assert summary["mean_hd95"] == pytest.approx(2.5)
    assert not any(key.startswith("excluded/") for key in summary)


def test_summarize_standard_skips_nan_and_inf() -> None:
    dice_values = np.array([[0.9, math.nan], [0.7, 0.0], [0.8, 0.5]])
    hd_values = np.array([[2.0, math.inf], [math.inf, math.inf], [6.0, 3.0]])
    summary = summarize(dice_values, hd_values, NAMES, "standard")
    assert summary["dice/aorta"] == pytest.approx(0.8)
    assert summary["dice/liver"] == pytest.approx(0.25)
    assert summary["hd95/aorta"] == pytest.approx(4.0)
    assert summary["hd95/liver"] == pytest.approx(3.0)
    assert summary["excluded/aorta"] == 1 and summary["excluded/liver"] == 2  # cases with a non-finite value
    assert summary["mean_dice"] == pytest.approx(0.525)
    assert summary["mean_hd95"] == pytest.approx(3.5)
    all_missing = summarize(np.full((2, 2), math.nan), np.full((2, 2), math.inf), NAMES, "standard")
    assert math.isnan(all_missing["dice/aorta"]) and math.isnan(all_missing["mean_hd95"])
    with pytest.raises(ValueError, match="class names"):
        summarize(dice_values, hd_values, ("one",), "standard")


def test_case_csv_and_table(tmp_path) -> None:
    dice_values = np.array([[0.9, math.nan], [0.7, 0.25]])
    hd_values = np.array([[2.0, math.inf], [1.5, 3.0]])
    path = tmp_path / "out" / "cases.csv"
    write_case_csv(path, ["case0001", "case0002"], dice_values, hd_values, NAMES)
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["case"] for row in rows] == ["case0001", "case0002"]
    assert list(rows[0]) == ["case", "dice/aorta", "dice/liver", "hd95/aorta", "hd95/liver"]
    assert math.isnan(float(rows[0]["dice/liver"])) and math.isinf(float(rows[0]["hd95/liver"]))
    assert float(rows[1]["dice/liver"]) == 0.25

    table = format_table(summarize(dice_values, hd_values, NAMES, "standard"), NAMES)
    lines = table.splitlines()
    assert "excluded" in lines[0] and lines[-1].startswith("mean")
    liver = next(line for line in lines if line.startswith("liver"))
    assert liver.split() == ["liver", "25.00", "3.00", "1"]
    plain = format_table(
        summarize(np.nan_to_num(dice_values), np.nan_to_num(hd_values, posinf=0), NAMES, "transunet"), NAMES
    )
    assert "excluded" not in plain and "aorta" in plain
