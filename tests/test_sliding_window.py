"""Sliding-window inference and test-time flips (`vit_segmentation.inference`, `task.predict_volume`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from vit_segmentation.config import EvalConfig
from vit_segmentation.inference import (
    flip_combinations,
    gaussian_importance_map,
    keep_largest_component,
    largest_component_classes,
    predict_with_flips,
    sliding_window_predict,
    window_starts,
)
from vit_segmentation.task import predict_volume
from vit_segmentation.transforms import resize_image
from vit_training.config import ConfigError, load_config


def _conv_model(in_chans: int = 1, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1)
    ).eval()


class _Constant(nn.Module):
    """Logits that ignore the image: the same vector at every pixel."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values[None, :, None, None].expand(x.shape[0], -1, *x.shape[-2:]).clone()


def _window_position(x: torch.Tensor) -> torch.Tensor:
    """Two 'logits' per pixel: its row and its column inside the window (a function of position only)."""
    n, _, h, w = x.shape
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return torch.stack([rows, cols])[None].expand(n, -1, -1, -1).clone()


def test_window_starts_cover_the_axis_and_end_flush() -> None:
    assert window_starts(16, 16, 0.5) == [0]
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(21, 8, 0.5) == [0, 4, 8, 12, 13]
    assert window_starts(21, 8, 0.0) == [0, 8, 13]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(21, 8, 1.0)


def test_gaussian_map_peaks_at_the_centre_and_is_floored() -> None:
    weights = gaussian_importance_map((9, 16))
    assert weights.shape == (9, 16)
    assert weights[4, 7] == pytest.approx(weights[4, 8])  # even width: two centre pixels
    assert float(weights.max()) == pytest.approx(np.exp(-(0.5**2) / (2 * 2.0**2)), rel=1e-6)
    assert float(weights.min()) >= 1e-3
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))


def test_window_as_large_as_the_slice_is_the_plain_forward() -> None:
    model = _conv_model()
    images = torch.randn(2, 1, 16, 24)
    with torch.no_grad():
        blended = sliding_window_predict(model, images, (16, 24), overlap=0.5, batch_size=1)
        direct = model(images)
    torch.testing.assert_close(blended, direct, rtol=1e-6, atol=1e-6)


def test_constant_logits_stay_constant() -> None:
    model = _Constant([0.5, -1.0, 2.0])
    images = torch.randn(3, 1, 37, 50)
    with torch.no_grad():
        blended = sliding_window_predict(model, images, (16, 16), overlap=0.5, batch_size=5)
    expected = torch.tensor([0.5, -1.0, 2.0])[None, :, None, None].expand_as(blended)
    torch.testing.assert_close(blended, expected, rtol=1e-6, atol=1e-6)


def test_position_dependent_logits_blend_like_a_direct_reference() -> None:
    height, width, window, overlap = 23, 30, (10, 12), 0.25
    images = torch.zeros(1, 1, height, width)
    blended = sliding_window_predict(_window_position, images, window, overlap=overlap, batch_size=3)

    # Reference: for every pixel, loop over the windows that cover it (steps int(10*0.75)=7, int(12*0.75)=9).
    sigma = [0.125 * window[0], 0.125 * window[1]]
    gauss = [np.exp(-((np.arange(n) - (n - 1) / 2) ** 2) / (2 * s**2)) for n, s in zip(window, sigma, strict=True)]
    weight_map = np.maximum(np.outer(gauss[0], gauss[1]), 1e-3)
    rows = [0, 7, 13]  # 0, 7, 14 -> the last moved back to 23 - 10 = 13
    cols = [0, 9, 18]  # 0, 9, 18 (18 + 12 = 30 reaches the end)
    numerator = np.zeros((2, height, width))
    denominator = np.zeros((height, width))
    for top, left in itertools.product(rows, cols):
        for y, x in itertools.product(range(window[0]), range(window[1])):
            weight = weight_map[y, x]
            numerator[:, top + y, left + x] += weight * np.array([y, x])
            denominator[top + y, left + x] += weight
    reference = numerator / denominator
    np.testing.assert_allclose(blended[0].numpy(), reference, rtol=1e-5, atol=1e-5)


def test_matches_monai_sliding_window_inference() -> None:
    monai_inferers = pytest.importorskip("monai.inferers")
    model = _conv_model(in_chans=2, classes=4, seed=3)
    images = torch.randn(2, 2, 45, 38, generator=torch.Generator().manual_seed(1))
    for overlap in (0.5, 0.25):
        with torch.no_grad():
            ours = sliding_window_predict(model, images, (16, 24), overlap=overlap, batch_size=4)
            theirs = monai_inferers.sliding_window_inference(
                images, (16, 24), 4, model, overlap=overlap, mode="gaussian", sigma_scale=0.125
            )
        torch.testing.assert_close(ours, torch.as_tensor(theirs), rtol=1e-5, atol=1e-5)


def test_slices_smaller_than_the_window_are_padded_and_cropped() -> None:
    monai_inferers = pytest.importorskip("monai.inferers", reason="the padded case is compared with MONAI")
    model = _conv_model(seed=5)
    images = torch.randn(1, 1, 11, 40, generator=torch.Generator().manual_seed(2))  # height < window
    with torch.no_grad():
        ours = sliding_window_predict(model, images, (16, 16), overlap=0.5)
        theirs = monai_inferers.sliding_window_inference(
            images, (16, 16), 4, model, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )
    assert ours.shape == (1, 3, 11, 40)
    torch.testing.assert_close(ours, torch.as_tensor(theirs), rtol=1e-5, atol=1e-5)


def test_padding_of_a_slice_smaller_than_the_window_in_both_axes() -> None:
    model = _conv_model(seed=6)
    images = torch.randn(1, 1, 9, 13)
    with torch.no_grad():
        ours = sliding_window_predict(model, images, (16, 20), overlap=0.5)
        # One window over the zero-padded slice (3 rows above, 4 below, 3 columns left, 4 right).
        padded = torch.nn.functional.pad(images, (3, 4, 3, 4))
        direct = model(padded)[:, :, 3:12, 3:16]
    assert ours.shape == (1, 3, 9, 13)
    torch.testing.assert_close(ours, direct, rtol=1e-6, atol=1e-6)


def test_flip_combinations_parse_the_config_forms() -> None:
    assert flip_combinations(False) == [()]
    assert flip_combinations(None) == [()]
    assert flip_combinations(True) == [(), (0,), (1,), (0, 1)]
    assert flip_combinations(["width", ["height", "width"]]) == [(), (1,), (0, 1)]
    with pytest.raises(ValueError, match="unknown axis 'depth'"):
        flip_combinations([["depth"]])


def test_flips_on_a_flip_equivariant_model_change_nothing() -> None:
    # A 3x3 convolution whose kernel is symmetric under both flips, zero padding: flipping the
    # input flips the output, so averaging the flipped passes gives the unflipped one.
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        kernel = conv.weight
        conv.weight.copy_((kernel + kernel.flip(2) + kernel.flip(3) + kernel.flip(2).flip(3)) / 4)
    images = torch.randn(2, 1, 12, 17)
    with torch.no_grad():
        plain = conv(images).softmax(1)
        averaged = predict_with_flips(lambda x: conv(x).softmax(1), images, flip_combinations(True))
    torch.testing.assert_close(averaged, plain, rtol=1e-5, atol=1e-6)

    # Through predict_volume in both modes (sliding windows: a pixel-wise model, since flipped
    # slices are cut into mirrored windows).
    pointwise = nn.Conv2d(1, 3, 1)
    volume = np.random.default_rng(0).normal(size=(3, 20, 27)).astype(np.float32)
    for model, mode in ((conv, "resize"), (pointwise, "sliding_window")):
        without = predict_volume(model, volume, (12, 16), "bilinear", 2, inference=mode)
        with_flips = predict_volume(model, volume, (12, 16), "bilinear", 2, inference=mode, tta_flips=True)
        np.testing.assert_array_equal(with_flips, without)


def test_predict_volume_sliding_window_is_full_resolution_blending() -> None:
    model = _conv_model(seed=7)
    volume = np.random.default_rng(1).normal(size=(5, 30, 41)).astype(np.float32)
    labels = predict_volume(model, volume, (16, 16), "bilinear", 2, inference="sliding_window",
                            window_overlap=0.5, window_batch_size=3)
    with torch.no_grad():
        blended = sliding_window_predict(lambda x: model(x).softmax(1), torch.from_numpy(volume)[:, None],
                                         (16, 16), overlap=0.5, batch_size=7)
    assert labels.shape == (5, 30, 41) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, blended.argmax(1).numpy())
    # A multi-channel volume (S, C, H, W) goes through the same path.
    two = _conv_model(in_chans=2, seed=8)
    stacked = np.stack([volume, -volume], axis=1)
    assert predict_volume(two, stacked, (16, 16), inference="sliding_window").shape == (5, 30, 41)
    assert predict_volume(two, stacked, (16, 16), "bilinear").shape == (5, 30, 41)


class _Threshold(nn.Module):
    """Two logits per pixel, background 0 and foreground 8 * (image - 0.5): a 'model' that
    segments a bright shape exactly at its own resolution, whatever the resolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), 8.0 * (x[:, :1] - 0.5)], dim=1)


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((prediction & truth).sum()) / float(prediction.sum() + truth.sum())


def test_resize_back_probabilities_keeps_boundaries_the_labels_lose() -> None:
    # Smooth ellipses on a 90 x 217 slice (the MRI-lobe size) predicted at 32 x 80: the argmax resized back
    # with nearest neighbours has 2.8-pixel stairs; the softmax resized back bilinearly follows the
    # smooth boundary the low-resolution image still encodes.
    rows, cols = np.mgrid[0:90, 0:217]
    radius2 = np.stack([((rows - 45 - 3 * k) / 30.5) ** 2 + ((cols - 100 - 5 * k) / 70.3) ** 2 for k in range(3)])
    truth = radius2 < 1
    image = np.clip(1.5 - radius2, 0.0, 1.0).astype(np.float32)  # smooth; 0.5 on the boundary
    labels = predict_volume(_Threshold(), image, (32, 80), "bilinear", 2, resize_back="labels")
    probabilities = predict_volume(_Threshold(), image, (32, 80), "bilinear", 2, resize_back="probabilities")
    assert labels.shape == probabilities.shape == truth.shape and probabilities.dtype == np.uint8
    dice_labels = np.mean([_dice(labels[k] == 1, truth[k]) for k in range(3)])
    dice_probabilities = np.mean([_dice(probabilities[k] == 1, truth[k]) for k in range(3)])
    assert dice_probabilities > 0.99 > dice_labels + 0.005, (dice_probabilities, dice_labels)
    # The same with test-time flips: averaged probabilities are resized, not labels.
    flipped = predict_volume(_Threshold(), image, (32, 80), "bilinear", 2, resize_back="probabilities",
                             tta_flips=["height"])
    assert np.mean([_dice(flipped[k] == 1, truth[k]) for k in range(3)]) > 0.99


def test_resize_back_is_the_labels_at_the_training_size_and_the_bilinear_softmax() -> None:
    model = _conv_model(seed=3)
    volume = np.random.default_rng(2).normal(size=(4, 24, 40)).astype(np.float32)
    # At the training size itself nothing is resized: both ways are the plain argmax.
    same = [predict_volume(model, volume, (24, 40), "bilinear", 3, resize_back=mode)
            for mode in ("labels", "probabilities")]
    np.testing.assert_array_equal(same[0], same[1])
    with torch.no_grad():
        np.testing.assert_array_equal(same[0], model(torch.from_numpy(volume)[:, None]).argmax(1).numpy())
    # Upsampled 2x: the argmax of the softmax, resized by torch's pixel-centre bilinear.
    small = volume[:, ::2, ::2].copy()
    labels = predict_volume(model, small, (24, 40), "bilinear", 3, resize_back="probabilities")
    assert labels.shape == (4, 12, 20)
    inputs = torch.from_numpy(np.stack([resize_image(s, (24, 40), "bilinear") for s in small]))[:, None]
    with torch.no_grad():
        softmax = model(inputs).softmax(1)
    expected = torch.nn.functional.interpolate(softmax, size=(12, 20), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(labels, expected.argmax(1).numpy())
    with pytest.raises(ValueError, match="resize_back='nearest' is not one of labels, probabilities"):
        predict_volume(model, volume, (24, 40), resize_back="nearest")


def test_eval_config_checks_the_inference_keys(tmp_path) -> None:
    from vit_segmentation.config import SegmentationConfig

    assert EvalConfig().inference == "resize"
    config = load_config(SegmentationConfig, None, ["eval.inference=sliding_window", "eval.tta_flips=[height]"])
    assert config.eval.inference_options()["tta_flips"] == ["height"]
    for override, message in (
        ("eval.inference=tiles", "eval.inference"),
        ("eval.window_overlap=1.0", "eval.window_overlap=1.0 must lie in"),
        ("eval.window_batch_size=0", "eval.window_batch_size=0 must be >= 1"),
        ("eval.tta_flips=[depth]", "unknown axis 'depth'"),
        ("eval.resize_back=logits", "eval.resize_back"),
    ):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            load_config(SegmentationConfig, None, [override])


# ------------------------------------------------------------------ largest connected component
def _two_blobs() -> np.ndarray:
    """(6, 12, 12) labels: class 1 as a large cube and a small far one, class 2 as one piece, class 3 as two equal pieces."""
    labels = np.zeros((6, 12, 12), dtype=np.uint8)
    labels[1:5, 1:6, 1:6] = 1      # 100 voxels
    labels[4:6, 9:11, 9:11] = 1    # 8 voxels, not touching
    labels[0:2, 8:12, 0:3] = 2     # one piece
    labels[5, 0, 11] = 3           # two single voxels, equal sizes
    labels[5, 11, 0] = 3
    return labels


def test_largest_component_keeps_the_biggest_piece_and_clears_the_rest() -> None:
    labels = _two_blobs()
    cleaned = keep_largest_component(labels, [1, 2])
    assert cleaned.dtype == labels.dtype and cleaned.shape == labels.shape
    assert (cleaned == 1).sum() == 100 and not cleaned[4:6, 9:11, 9:11].any()
    np.testing.assert_array_equal(cleaned == 2, labels == 2)
    np.testing.assert_array_equal(cleaned == 3, labels == 3)  # not listed: untouched
    np.testing.assert_array_equal(labels, _two_blobs())  # the input is not modified
    assert keep_largest_component(labels, []) is labels
    # corners touch: full connectivity joins two diagonal voxels into one component
    diagonal = np.zeros((3, 3, 3), dtype=np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 4
    np.testing.assert_array_equal(keep_largest_component(diagonal, [4]), diagonal)


def _largest_by_flood_fill(labels: np.ndarray, value: int) -> np.ndarray:
    """Reference: the mask of `value`'s largest 26-connected component by breadth-first search (first found wins ties)."""
    mask = labels == value
    seen = np.zeros_like(mask)
    best: list[tuple[int, ...]] = []
    steps = [step for step in itertools.product((-1, 0, 1), repeat=labels.ndim) if any(step)]
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        component, queue = [start], [start]
        while queue:
            voxel = queue.pop()
            for step in steps:
                neighbour = tuple(int(a + b) for a, b in zip(voxel, step, strict=True))
                if all(0 <= n < size for n, size in zip(neighbour, labels.shape, strict=True)) \
                        and mask[neighbour] and not seen[neighbour]:
                    seen[neighbour] = True
                    component.append(neighbour)
                    queue.append(neighbour)
        if len(component) > len(best):
            best = component
    largest = np.zeros_like(mask)
    for voxel in best:
        largest[voxel] = True
    return largest


def test_largest_component_matches_a_flood_fill_reference() -> None:
    rng = np.random.default_rng(5)
    labels = ((rng.random((8, 14, 16)) < 0.25) * rng.integers(1, 4, (8, 14, 16))).astype(np.uint8)
    labels[2:6, 3:10, 4:12] = 2  # one large component among speckles
    ours = keep_largest_component(labels, [1, 2, 3])
    for value in (1, 2, 3):
        np.testing.assert_array_equal(ours == value, _largest_by_flood_fill(labels, value))
    np.testing.assert_array_equal(ours[(ours == 0) & (labels != 0)], 0)  # removed voxels became background


def test_largest_component_setting_parses_and_names_bad_values() -> None:
    assert largest_component_classes(False) == [] and largest_component_classes(None) == []
    assert largest_component_classes(True, 4) == [1, 2, 3]
    assert largest_component_classes([3, 1, 3], 4) == [1, 3]
    with pytest.raises(ValueError, match="class 0 is not a foreground class"):
        largest_component_classes([0], 4)
    with pytest.raises(ValueError, match="class 4 is not a foreground class"):
        largest_component_classes([4], 4)
    with pytest.raises(ValueError, match="must be true, false or a list"):
        largest_component_classes("all", 4)


def test_predict_volume_applies_the_largest_component_over_the_whole_volume() -> None:
    model = _conv_model(seed=2)
    volume = np.random.default_rng(3).normal(size=(6, 20, 24)).astype(np.float32)
    plain = predict_volume(model, volume, (16, 16), "bilinear", 4)
    cleaned = predict_volume(model, volume, (16, 16), "bilinear", 4, largest_component=True)
    np.testing.assert_array_equal(cleaned, keep_largest_component(plain, [1, 2]))
    assert (cleaned != plain).any()  # random logits give speckles: the post-processing changed something


def test_config_checks_largest_component_against_the_class_count() -> None:
    from vit_segmentation.config import SegmentationConfig

    config = load_config(SegmentationConfig, None, ["eval.largest_component=[1, 8]"])
    assert config.eval.inference_options()["largest_component"] == [1, 8]
    with pytest.raises(ConfigError, match="class 9 is not a foreground class"):
        load_config(SegmentationConfig, None, ["eval.largest_component=[9]"])
    with pytest.raises(ConfigError, match="largest_component"):
        load_config(SegmentationConfig, None, ["eval.largest_component=everything"])
