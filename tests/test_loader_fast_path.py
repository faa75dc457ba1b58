"""data.fast_decode (`DraftCropTransform`): the same crop statistics as torchvision's RandomResizedCrop,
the same pixels as a full decode for one box, and a training set that reads through it."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from vit_classification.data import AugmentedSamples, ImageFolderDataset
from vit_classification.transforms import DraftCropTransform, build_train_transform, sample_resized_crop
from vit_training.data import jpeg_reduction, read_image, read_image_crop

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def smooth_jpeg(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like JPEG (smooth colour fields + mild noise); returns its full decode."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(2, height // 64), max(2, width // 64), 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, "JPEG", quality=95)
    return read_image(path, 3)


@pytest.mark.parametrize(("height", "width"), [(375, 500), (500, 375), (100, 400)])
def test_crop_boxes_follow_torchvision_random_resized_crop(height: int, width: int) -> None:
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    rng = random.Random(0)
    ours = np.array([sample_resized_crop(height, width, scale, ratio, rng) for _ in range(4000)], dtype=np.float64)
    torch.manual_seed(0)
    image = torch.empty(3, height, width)
    reference = np.array([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(4000)],
                         dtype=np.float64)
    for boxes in (ours, reference):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= height).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
    statistics = {
        "area fraction": lambda b: b[:, 2] * b[:, 3] / (height * width),
        "aspect ratio": lambda b: b[:, 3] / b[:, 2],
        "centre y": lambda b: (b[:, 0] + b[:, 2] / 2) / height,
        "centre x": lambda b: (b[:, 1] + b[:, 3] / 2) / width,
    }
    for name, statistic in statistics.items():
        a, b = statistic(ours), statistic(reference)
        assert ks_2samp(a, b).pvalue > 1e-3, name
        assert abs(a.mean() - b.mean()) < 0.03 * max(1.0, abs(b.mean())), name


def test_fast_path_pixels_match_a_full_decode_for_the_same_box(tmp_path: Path) -> None:
    """Reduced JPEG decoding + crop + resize against PIL's full decode + the same crop + resize."""
    path = tmp_path / "photo.jpg"
    full = smooth_jpeg(path, 1200, 1600)
    out = (224, 224)
    for box in [(0, 0, 1200, 1600), (100, 200, 950, 1000), (300, 400, 500, 450), (10, 20, 120, 90)]:
        top, left, box_h, box_w = box
        region = read_image_crop(path, lambda h, w, b=box: b, out)
        fast = cv2.resize(region, out[::-1], interpolation=cv2.INTER_CUBIC).astype(np.float64)
        slow = cv2.resize(full[top:top + box_h, left:left + box_w], out[::-1], interpolation=cv2.INTER_CUBIC)
        mse = np.mean((fast - slow.astype(np.float64)) ** 2)
        psnr = 10 * np.log10(255.0**2 / max(mse, 1e-12))
        assert psnr > 30, (box, jpeg_reduction((box_h, box_w), out), psnr)
        assert np.abs(fast - slow).mean() < 3.0, box
    assert jpeg_reduction((1200, 1600), out) == 2 and jpeg_reduction((120, 90), out) == 1
    assert jpeg_reduction((1800, 1800), out) == 4


def test_non_jpeg_files_take_the_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    region = read_image_crop(path, lambda h, w: (5, 10, 30, 40), (16, 16))
    np.testing.assert_array_equal(region, image[5:35, 10:50])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image_crop(tmp_path / "missing.jpg", lambda h, w: (0, 0, h, w), (16, 16))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_image_crop(tmp_path / "bad.jpg", lambda h, w: (0, 0, h, w), (16, 16))


def test_training_set_reads_through_the_fast_path_deterministically(tmp_path: Path) -> None:
    for k in range(4):
        (tmp_path / f"c{k % 2}").mkdir(exist_ok=True)
        smooth_jpeg(tmp_path / f"c{k % 2}" / f"{k}.jpg", 120 + 10 * k, 160, seed=k)
    kwargs = dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_ops=2, color_magnitude=0.5)
    fast = build_train_transform(32, 3, MEAN, STD, fast_decode=True, **kwargs)
    reference = build_train_transform(32, 3, MEAN, STD, **kwargs)
    assert isinstance(fast, DraftCropTransform) and fast.is_random
    source = ImageFolderDataset(tmp_path, channels=3)
    first = AugmentedSamples(source, fast, seed=3)
    second = AugmentedSamples(source, build_train_transform(32, 3, MEAN, STD, fast_decode=True, **kwargs), seed=3)
    assert first.reads_crops
    for i in range(len(first)):
        image, label, index = first[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and (label, index) == (i // 2, i)
        torch.testing.assert_close(image, second[i][0])  # same (seed, epoch, index) -> same tensor
    # Same value range as the reference pipeline (both normalised by the same Normalize).
    slow = AugmentedSamples(source, reference, seed=3)
    assert abs(float(first[0][0].mean()) - float(slow[0][0].mean())) < 1.5
    # A decoded array goes through the same crop, resize and steps.
    assert fast(read_image(source.samples[0][0], 3)).shape == (3, 32, 32)
