"""Classification augmentation: albumentations pipelines per sample, timm's Mixup/CutMix per batch.

Per sample (`build_train_transform`, `build_eval_transform`): a uint8 (H, W, C) numpy image, as
every dataset of `vit_classification.data` returns, becomes a float32 (C, size_h, size_w)
tensor normalised with the given mean/std. The train pipeline follows timm's ImageNet recipe
(random resized crop, flip, a light RandAugment-like photometric set); the eval pipeline is
timm's "resize the shorter side to size / crop_pct, then center crop".

Per batch, on the device, after the per-sample pipeline (so they also work on cached samples):
`random_translate` (small random shifts), `random_erase` (timm's `RandomErasing`) and
`build_mixup` (timm's `Mixup`, which also turns integer labels into soft targets with label
smoothing).

albumentations asks PyPI for updates on import unless ``NO_ALBUMENTATIONS_UPDATE=1`` is set;
this module sets it (when unset) before importing albumentations: a library import should not
reach the network.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from typing import Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from timm.data import Mixup  # noqa: E402
from timm.data.random_erasing import RandomErasing  # noqa: E402

from vit_training.data import read_image_crop  # noqa: E402
from vit_training.seeding import SampleRandomState  # noqa: E402

__all__ = [
    "DraftCropTransform",
    "ImageTransform",
    "sample_resized_crop",
    "build_eval_transform",
    "build_mixup",
    "build_train_transform",
    "eval_resize_size",
    "random_erase",
    "random_translate",
]

Channels = Literal[1, 3]
Interpolation = Literal["bilinear", "bicubic"]


class ImageTransform:
    """A per-sample albumentations pipeline as a plain callable: uint8 (H, W, C) -> float32 (C, h, w).

    Datasets call ``transform(image)``; the albumentations object stays reachable as `pipeline`
    (to print, serialise or reseed it).
    """

    def __init__(self, pipeline: A.Compose, channels: Channels, is_random: bool = True) -> None:
        """
        Args:
            pipeline: the albumentations pipeline.
            channels: image channels it takes and gives.
            is_random: whether its output depends on its random draws; a data set reseeds only a
                random pipeline before each sample (the reseed costs more than a small resize).
        """
        self.pipeline = pipeline
        self.channels = channels
        self.is_random = is_random
        self._random_state = SampleRandomState()

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """
        Args:
            image: uint8 numpy (H, W, C) with C == `channels`.

        Returns:
            float32 tensor (C, h, w), normalised.
        """
        if image.ndim != 3 or image.shape[2] != self.channels or image.dtype != np.uint8:
            raise ValueError(
                f"transform expects a uint8 (H, W, {self.channels}) image, got {image.shape} {image.dtype}"
            )
        return self.pipeline(image=image)["image"]

    def set_seed(self, seed: int | None) -> None:
        """Reseed the random choices. albumentations 2 draws from its own generators, not torch's:
        with DataLoader workers call this in ``worker_init_fn`` with a per-worker seed, otherwise
        workers that inherit one seeded pipeline repeat each other's augmentations.

        One numpy and one Python generator, reseeded in place (`vit_training.seeding`), are shared
        by every step of the pipeline (albumentations' `set_random_state`): the same seed gives the
        same draws, and the training set can afford to reseed once per sample. None draws fresh
        entropy.
        """
        self._random_state.seed_pipeline(self.pipeline, seed)

    def __repr__(self) -> str:
        return f"ImageTransform(channels={self.channels}, pipeline={self.pipeline!r})"


def sample_resized_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """A random-resized-crop box of a `height` x `width` image: torchvision's `RandomResizedCrop.get_params`.

    Up to 10 tries of an area fraction uniform in `scale` and an aspect ratio (w / h) log-uniform
    in `ratio`, the first whose box fits placed uniformly; otherwise the central crop of the whole
    image, its ratio clamped to `ratio`. albumentations' RandomResizedCrop samples the same way.

    Returns:
        (top, left, box_h, box_w) in pixels of the image.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        box_w = round(math.sqrt(target_area * aspect))
        box_h = round(math.sqrt(target_area / aspect))
        if 0 < box_w <= width and 0 < box_h <= height:
            return rng.randint(0, height - box_h), rng.randint(0, width - box_w), box_h, box_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        box_w, box_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        box_h, box_w = height, round(height * max(ratio))
    else:
        box_h, box_w = height, width
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


class DraftCropTransform:
    """The training pipeline of `build_train_transform` with the random resized crop taken first,
    from the file: ``data.fast_decode``.

    The crop box is sampled from the image size in the file's header (`sample_resized_crop`, the
    same distribution as the reference pipeline's crop, relative to the full image), then only
    what the box needs is decoded (`vit_training.data.read_image_crop`: JPEG DCT-domain reduction
    to 1/2, 1/4 or 1/8 when the box keeps at least 2x the output size there, OpenCV's
    libjpeg-turbo decode straight to interleaved pixels), and the box is resized to the output
    size; flip, photometric ops, Normalize and the tensor conversion are the reference's own
    albumentations steps on the uint8 crop. The crop statistics are the reference's and the output
    for one box matches a full decode to within JPEG decoder rounding (tests/test_loader_fast_path.py).

    Call `load(path, ...)` with a file (the fast path) or the transform itself with a decoded
    uint8 (H, W, C) array (any data set: the same crop on the whole array).
    """

    def __init__(
        self,
        size_hw: tuple[int, int],
        scale: tuple[float, float],
        ratio: tuple[float, float],
        interpolation: int,
        rest: A.Compose,
        channels: Channels,
        is_random: bool,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            size_hw: output (height, width).
            scale, ratio: the crop's area-fraction and aspect-ratio ranges.
            interpolation: OpenCV flag of the resize (the reference's).
            rest: the albumentations steps after the crop (flip, colour ops, Normalize, ToTensorV2).
            channels: image channels it takes and gives.
            is_random: whether the output depends on the draws (see `ImageTransform`).
            seed: the first seed of the draws (None: fresh entropy).
        """
        self.size_hw = size_hw
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolation = interpolation
        self.pipeline = rest
        self.channels = channels
        self.is_random = is_random
        self._random_state = SampleRandomState()
        self.set_seed(seed)

    def set_seed(self, seed: int | None) -> None:
        """Reseed the crop and the albumentations steps from one seed (None: fresh entropy)."""
        if seed is None:
            seed = random.SystemRandom().getrandbits(63)
        # The crop draws from the same Python generator the albumentations steps then continue.
        self._random_state.seed_pipeline(self.pipeline, seed)

    def sample_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, box_h, box_w) of the next crop of a `height` x `width` image."""
        return sample_resized_crop(height, width, self.scale, self.ratio, self._random_state.python)

    def _finish(self, region: np.ndarray) -> torch.Tensor:
        out_h, out_w = self.size_hw
        if region.shape[:2] != (out_h, out_w):
            region = cv2.resize(region, (out_w, out_h), interpolation=self.interpolation)
        if region.ndim == 2:  # cv2 drops a single channel
            region = region[:, :, None]
        return self.pipeline(image=region)["image"]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, C) -> float32 (C, h, w): the crop, resize and the rest on a decoded image."""
        if image.ndim != 3 or image.shape[2] != self.channels or image.dtype != np.uint8:
            raise ValueError(f"transform expects a uint8 (H, W, {self.channels}) image, got {image.shape} {image.dtype}")
        top, left, box_h, box_w = self.sample_box(image.shape[0], image.shape[1])
        return self._finish(image[top:top + box_h, left:left + box_w])

    def load(
        self,
        path: str | os.PathLike,
        background: int | tuple[int, int, int] = 0,
        float_range: tuple[float, float] = (0.0, 1.0),
    ) -> torch.Tensor:
        """Read and transform one file, decoding only what the sampled crop needs.

        Returns:
            float32 (C, h, w), normalised. Raises as `vit_training.data.read_image`.
        """
        region = read_image_crop(path, self.sample_box, self.size_hw, self.channels, background, float_range)
        return self._finish(region)

    def __repr__(self) -> str:
        return (f"DraftCropTransform(size={self.size_hw}, scale={self.scale}, ratio={self.ratio}, "
                f"channels={self.channels}, then={self.pipeline!r})")


def _size_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    if len(input_size) != 2:
        raise ValueError(f"input_size must be an int or (height, width), got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


def _cv2_interpolation(interpolation: Interpolation) -> int:
    if interpolation == "bilinear":
        return cv2.INTER_LINEAR
    if interpolation == "bicubic":
        return cv2.INTER_CUBIC
    raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")


def _normalize(channels: Channels, mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    """Normalize on 0..255 input: (x / 255 - mean) / std per channel."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ValueError(f"{name} has {len(values)} values {values} but channels={channels}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return A.Normalize(mean=mean, std=std, max_pixel_value=255.0)


def _photometric_ops(magnitude: float) -> list[A.BasicTransform]:
    """A light RandAugment-like photometric set for RGB images; `magnitude` in (0, 1] scales them.

    Each op applies with probability 0.5 once chosen, like RandAugment's ops in timm.
    """
    return [
        A.RandomBrightnessContrast(brightness_limit=magnitude, contrast_limit=magnitude, p=0.5),
        A.ColorJitter(brightness=0.0, contrast=0.0, saturation=magnitude, hue=min(0.5, magnitude / 4), p=0.5),
        A.RandomGamma(gamma_limit=(100 * (1 - magnitude), 100 * (1 + magnitude)), p=0.5),
        A.Equalize(p=0.5),
        A.Posterize(num_bits=(4, 7), p=0.5),
    ]


def build_train_transform(
    input_size: int | Sequence[int],
    channels: Channels,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_ops: int = 2,
    color_magnitude: float = 0.3,
    interpolation: Interpolation = "bicubic",
    seed: int | None = None,
    fast_decode: bool = False,
) -> ImageTransform | DraftCropTransform:
    """The training pipeline: RandomResizedCrop, HorizontalFlip, photometric ops, Normalize, to tensor.

    Args:
        input_size: output side, or (height, width).
        channels: 1 or 3, as the dataset delivers them and the model takes them.
        mean, std: per-channel statistics of 0..1 pixels, `channels` values each.
        scale: area fraction range of the random crop; (0.08, 1) is the ImageNet recipe, small
            images such as 28x28 Fashion-MNIST want a gentler (0.35, 1) or so.
        ratio: aspect-ratio range of the random crop.
        hflip: flip probability; 0 for digits and text, whose mirror image is another symbol.
        color_ops: photometric ops drawn per image from brightness/contrast, saturation/hue,
            gamma, equalize, posterize (0 = none). Only for channels == 3: these are colour
            augmentations, so a 1-channel pipeline gets none whatever this says.
        color_magnitude: strength of those ops, in (0, 1].
        interpolation: for the crop's resize.
        seed: seeds albumentations' own generators (None: fresh entropy); see `ImageTransform.set_seed`.
        fast_decode: a `DraftCropTransform` (the crop sampled first, then only what it needs decoded
            from the file) instead of the albumentations pipeline: the same crop statistics and
            steps, several times less decoding on large JPEGs.

    Returns:
        uint8 (H, W, channels) -> float32 (channels, size_h, size_w).
    """
    height, width = _size_hw(input_size)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    if not 0 <= hflip <= 1:
        raise ValueError(f"hflip is a probability, got {hflip}")
    if color_ops < 0 or (color_ops > 0 and not 0 < color_magnitude <= 1):
        raise ValueError(
            f"need color_ops >= 0 and 0 < color_magnitude <= 1, got {color_ops}, {color_magnitude}"
        )
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
    crop = A.RandomResizedCrop(size=(height, width), scale=scale, ratio=ratio, interpolation=_cv2_interpolation(interpolation))
    steps: list[A.BasicTransform | A.BaseCompose] = [] if fast_decode else [crop]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    colour = channels == 3 and color_ops > 0
    if colour:
        ops = _photometric_ops(color_magnitude)
        steps.append(A.SomeOf(ops, n=min(color_ops, len(ops)), replace=False, p=1.0))
    steps += [_normalize(channels, mean, std), ToTensorV2()]
    # A crop of the whole area at ratio 1 is the whole (square) image or, for any other shape, the
    # central square (the crop's fallback): no draw changes it. Without flips and colour ops too,
    # the pipeline is deterministic (the Fashion-MNIST recipe).
    is_random = tuple(scale) != (1.0, 1.0) or tuple(ratio) != (1.0, 1.0) or hflip > 0 or colour
    if fast_decode:
        return DraftCropTransform((height, width), tuple(scale), tuple(ratio), _cv2_interpolation(interpolation),
                                  A.Compose(steps), channels, is_random, seed=seed)
    return ImageTransform(A.Compose(steps, seed=seed), channels, is_random=is_random)


def eval_resize_size(input_size: int | Sequence[int], crop_pct: float) -> tuple[int, int]:
    """timm's eval resize: floor(size / crop_pct) per side (224 at crop_pct 0.875 -> 256)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    height, width = _size_hw(input_size)
    return math.floor(height / crop_pct), math.floor(width / crop_pct)


def build_eval_transform(
    input_size: int | Sequence[int],
    channels: Channels,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.875,
    interpolation: Interpolation = "bicubic",
) -> ImageTransform:
    """The deterministic eval pipeline (timm's): resize, center crop, Normalize, to tensor.

    A square `input_size` resizes the shorter side to floor(size / crop_pct), keeping the aspect
    ratio; a (height, width) one resizes both sides to floor(side / crop_pct), as timm does.
    crop_pct = 1 resizes straight to the input size's shorter side (no border dropped).

    Returns:
        uint8 (H, W, channels) -> float32 (channels, size_h, size_w).
    """
    height, width = _size_hw(input_size)
    resize_h, resize_w = eval_resize_size((height, width), crop_pct)
    flag = _cv2_interpolation(interpolation)
    if height == width:
        resize: A.BasicTransform = A.SmallestMaxSize(max_size=resize_h, interpolation=flag)
    else:
        resize = A.Resize(height=resize_h, width=resize_w, interpolation=flag)
    steps = [resize, A.CenterCrop(height=height, width=width), _normalize(channels, mean, std), ToTensorV2()]
    return ImageTransform(A.Compose(steps), channels, is_random=False)


def build_mixup(
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    label_smoothing: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: Literal["batch", "pair", "elem"] = "batch",
) -> Mixup | None:
    """timm's Mixup/CutMix with label smoothing, or None when both alphas are 0.

    The returned object works on a whole batch, in place on the images:
    ``images, soft_targets = mixup(images, labels)`` with images float (B, C, H, W), labels int64
    (B,), B even (use ``drop_last=True`` on the train loader); soft_targets are float (B,
    num_classes), each row summing to 1 and smoothed by `label_smoothing`. Train with
    ``timm.loss.SoftTargetCrossEntropy`` on them.

    With None (no mixing) label smoothing belongs in the loss instead:
    ``torch.nn.CrossEntropyLoss(label_smoothing=...)`` on the integer labels.

    Args:
        num_classes: length of the soft target rows.
        mixup_alpha: Beta(alpha, alpha) of mixup's lambda; 0 turns mixup off (0.8 in DeiT).
        cutmix_alpha: Beta(alpha, alpha) of cutmix's box area; 0 turns cutmix off (1.0 in DeiT).
        label_smoothing: mass spread over all classes, in [0, 1).
        prob: probability that a batch is mixed at all.
        switch_prob: with both on, the probability of cutmix instead of mixup for a batch.
        mode: "batch" (one lambda per batch), "pair" or "elem" (per pair / element), timm's modes.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return None
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def random_translate(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift every image of a batch by its own random offset of up to `max_shift` pixels.

    Each image is moved by (dy, dx), drawn uniformly from [-max_shift, max_shift] with torch's
    generator on the images' device; the rows and columns it uncovers repeat the edge pixels
    (replicate padding), so no artificial border value enters normalised data.

    Args:
        images: float (B, C, H, W).
        max_shift: the largest shift in pixels, >= 0; 0 returns `images` unchanged.

    Returns:
        A new float (B, C, H, W) tensor.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, mode="replicate")  # (B, C, H + 2s, W + 2s)
    # The window of image b starts at (top[b], left[b]) in the padded map; max_shift is no shift.
    top = torch.randint(0, 2 * max_shift + 1, (batch, 1), device=images.device)
    left = torch.randint(0, 2 * max_shift + 1, (batch, 1), device=images.device)
    rows = top + torch.arange(height, device=images.device)  # (B, H)
    cols = left + torch.arange(width, device=images.device)  # (B, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    # Advanced indexing on dims 0, 2, 3 puts the channel dim last: (B, H, W, C).
    shifted = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous()


def random_erase(images: torch.Tensor, probability: float) -> torch.Tensor:
    """timm's `RandomErasing` over a batch, in place: DeiT's ``reprob`` with mode "pixel".

    Each image, with `probability`, gets one rectangle of 2-33% of its area and aspect ratio in
    [0.3, 3.3] filled with standard normal noise per pixel (the data are normalised, so that is
    noise of the data's own scale). Draws from Python's `random` (as timm does), which
    Accelerate's `save_state` saves.

    Args:
        images: float (B, C, H, W), normalised.
        probability: per image, in [0, 1]; 0 returns `images` untouched.

    Returns:
        `images`, erased in place.
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must lie in [0, 1], got {probability}")
    if probability == 0:
        return images
    eraser = RandomErasing(probability=probability, mode="pixel", device=images.device)
    return eraser(images)
