"""Slice augmentation and resizing: the image and its label map always move together.

A slice is a float32 (H, W) image, or (C, H, W) with C channels (modalities), already normalised
(e.g. CT clipped to [-125, 275] HU and scaled to [0, 1]), with an integer (H, W) label map.
`SliceTransform` returns model inputs: image float32 (C, h, w) (C = 1 for a 2D slice) and labels
int64 (h, w) at the training size (h, w). Every channel goes through the same geometric steps.

Training (`build_train_transform`, TransUNet's `RandomGenerator` plus an optional zoom):
    with p=gamma_prob:    gamma curve with gamma ~ U(gamma_range) (nnU-Net's intensity augmentation),
                          one draw per group of channels, each group's [min, max] kept; off by default
    with p=rot_flip_prob: rot90 by k in {0, 1, 2, 3} (optional), then a flip (of a random axis,
                          TransUNet's, or of a chosen one)
    with p=rotate_prob:   rotation by U(-limit, limit) degrees and zoom by U(scale) (image bilinear,
                          labels nearest, zeros outside)
    with p=elastic_prob:  elastic deformation (Simard et al.): per-pixel displacements drawn from
                          N(0, 1), smoothed by a Gaussian of elastic_sigma px, times elastic_alpha
                          (image bilinear, labels nearest); off by default
    resize to (h, w):     image bicubic / bilinear, labels nearest
Evaluation (`build_eval_transform`): the resize only.

Every random draw comes from albumentations' own generator: `SliceTransform.set_seed` reseeds
it (the task does so per sample from (seed, epoch, index), so a resumed run repeats exactly).
Resizing uses OpenCV with pixel-centre geometry (labels `INTER_NEAREST_EXACT`); TransUNet uses
`scipy.ndimage.zoom` (order 3 / 0, corner-aligned), which places pixels up to half an output
pixel differently at the borders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # a library import must not reach the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vit_training.seeding import SampleRandomState  # noqa: E402

__all__ = [
    "GroupGamma",
    "SliceTransform",
    "build_eval_transform",
    "build_train_transform",
    "resize_image",
    "resize_labels",
]

Interpolation = Literal["bilinear", "bicubic"]
FlipAxis = Literal["random", "height", "width"]


def _cv2_interpolation(interpolation: Interpolation) -> int:
    if interpolation == "bilinear":
        return cv2.INTER_LINEAR
    if interpolation == "bicubic":
        return cv2.INTER_CUBIC
    raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")


def _size_hw(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) in pixels, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _label_storage(labels: np.ndarray) -> np.ndarray:
    """Labels as uint8 / uint16 for OpenCV (which has no int64); negative values are an error."""
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.uint8)
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        negative = np.unique(labels[labels < 0])[:10].tolist()
        raise ValueError(f"labels hold negative values {negative}; labels are class indices 0..C-1")
    if high < 256:
        return labels.astype(np.uint8, copy=False)
    if high < 65536:
        return labels.astype(np.uint16, copy=False)
    raise ValueError(f"labels hold the value {high}; at most 65535 classes are supported")


def resize_image(image: np.ndarray, size: Sequence[int], interpolation: Interpolation = "bicubic") -> np.ndarray:
    """A float (H, W) slice, or (C, H, W) channels, resized to `size` = (h, w), float32; returned as
    is when already that size."""
    height, width = _size_hw(size)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        if image.shape[1:] == (height, width):
            return image
        return np.stack([resize_image(channel, size, interpolation) for channel in image])
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W) or channels (C, H, W), got shape {image.shape}")
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=_cv2_interpolation(interpolation))


def resize_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """An integer (H, W) label map resized nearest (pixel centres) to `size` = (h, w), int64."""
    height, width = _size_hw(size)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2D label map (H, W), got shape {labels.shape}")
    if labels.shape == (height, width):
        return labels.astype(np.int64, copy=False)
    stored = _label_storage(labels)
    return cv2.resize(stored, (width, height), interpolation=cv2.INTER_NEAREST_EXACT).astype(np.int64)


class SliceTransform:
    """An albumentations pipeline for (slice, labels) pairs as a plain callable.

    Args:
        pipeline: an `A.Compose` that takes ``image`` float32 (H, W) and ``mask`` uint (H, W).
        size: the (h, w) it produces.
    """

    def __init__(self, pipeline: A.Compose, size: tuple[int, int]) -> None:
        self.pipeline = pipeline
        self.size = size
        self._random_state = SampleRandomState()

    def __call__(self, image: np.ndarray, labels: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            image: float (H, W) normalised slice, or (C, H, W) channels.
            labels: integer (H, W) label map, or None (inference).

        Returns:
            image float32 (C, h, w) (C = 1 for a 2D slice) and labels int64 (h, w) (None when none was given).
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim not in (2, 3):
            raise ValueError(f"expected a 2D slice (H, W) or channels (C, H, W), got shape {image.shape}")
        # albumentations takes channels last: (H, W, C).
        image = np.ascontiguousarray(image if image.ndim == 2 else image.transpose(1, 2, 0))
        if labels is None:
            out = self.pipeline(image=image)
            return self._channels_first(out["image"]), None
        if labels.shape != image.shape[:2]:
            raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in shape")
        out = self.pipeline(image=image, mask=np.ascontiguousarray(_label_storage(labels)))
        labels_t = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64))
        return self._channels_first(out["image"]), labels_t

    @staticmethod
    def _channels_first(image: np.ndarray) -> torch.Tensor:
        """albumentations' (h, w) or (h, w, C) output as a (C, h, w) tensor."""
        image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(image))

    def set_seed(self, seed: int | None) -> None:
        """Reseed the random choices (albumentations 2 draws from its own generators, not torch's)."""
        self._random_state.seed_pipeline(self.pipeline, seed)

    def __repr__(self) -> str:
        return f"SliceTransform(size={self.size}, pipeline={self.pipeline!r})"


class GroupGamma(A.ImageOnlyTransform):
    """A gamma curve on the image's intensities, one gamma per group of channels, range kept.

    Each group of `group_size` consecutive channels (one modality with its 2.5D neighbours, which
    `data.stack_context_slices` places next to each other) is mapped to [0, 1] by its own min and
    max, raised to ``gamma ~ U(gamma_range)`` and mapped back, as nnU-Net's gamma augmentation does per
    channel: intensities are bent (gamma < 1 brightens the dark end) but never leave the group's
    range, so a CT window or an MR z-score stays as it was normalised. A constant group is unchanged.
    Neighbouring slices of one modality share the draw, so the 2.5D stack stays consistent.

    Args:
        gamma_range: (low, high) of the uniform gamma draw, 0 < low <= high.
        group_size: channels per draw; the image's channel count must be a multiple of it.
        p: probability of applying it to a sample.
    """

    def __init__(self, gamma_range: tuple[float, float] = (0.7, 1.5), group_size: int = 1, p: float = 0.3) -> None:
        super().__init__(p=p)
        low, high = float(gamma_range[0]), float(gamma_range[1])
        if not 0 < low <= high:
            raise ValueError(f"gamma_range={[low, high]} must satisfy 0 < low <= high")
        if group_size < 1:
            raise ValueError(f"group_size={group_size} must be >= 1")
        self.gamma_range = (low, high)
        self.group_size = int(group_size)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        channels = 1 if image.ndim == 2 else image.shape[-1]
        if channels % self.group_size:
            raise ValueError(f"the image has {channels} channels, not a multiple of the gamma group size {self.group_size}")
        return {"gammas": [self.py_random.uniform(*self.gamma_range) for _ in range(channels // self.group_size)]}

    def apply(self, img: np.ndarray, gammas: Sequence[float] = (), **params: Any) -> np.ndarray:
        """img float (H, W) or (H, W, C) -> the same shape and dtype with each group's gamma applied."""
        out = np.array(img, dtype=np.float32, copy=True)
        view = out[..., None] if out.ndim == 2 else out
        for group, gamma in enumerate(gammas):
            channels = view[..., group * self.group_size:(group + 1) * self.group_size]
            low, high = float(channels.min()), float(channels.max())
            if high > low:
                scaled = (channels - low) / (high - low)
                channels[...] = np.power(scaled, gamma) * (high - low) + low
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gamma_range", "group_size")


def _resize(size: tuple[int, int], interpolation: Interpolation) -> A.Resize:
    return A.Resize(height=size[0], width=size[1], interpolation=_cv2_interpolation(interpolation),
                    mask_interpolation=cv2.INTER_NEAREST_EXACT)


def build_train_transform(
    input_size: Sequence[int],
    rot_flip_prob: float = 0.5,
    rot90: bool = True,
    flip_axis: FlipAxis = "random",
    rotate_prob: float = 0.5,
    rotate_limit: float = 20.0,
    scale: tuple[float, float] = (1.0, 1.0),
    interpolation: Interpolation = "bicubic",
    seed: int | None = None,
    elastic_prob: float = 0.0,
    elastic_alpha: float = 50.0,
    elastic_sigma: float = 5.0,
    gamma_prob: float = 0.0,
    gamma_range: tuple[float, float] = (0.7, 1.5),
    channel_group: int = 1,
) -> SliceTransform:
    """TransUNet's training augmentation (rot90 + flip, small rotation) with optional zoom, then resize.

    Args:
        input_size: (h, w) of the output.
        rot_flip_prob: probability of the rot90 + flip step.
        rot90: include a random rot90 in that step (off for non-square slices: a rotated 90 x 217
            slice would be squeezed into a 96 x 224 input).
        flip_axis: the flip of that step: ``"random"`` (either axis, TransUNet), ``"height"`` (rows
            reversed: up-down) or ``"width"`` (columns reversed: left-right). One axis suits data
            whose classes depend on position along the other (brain lobes front to back).
        rotate_prob: probability of the rotation / zoom step.
        rotate_limit: rotation range ±degrees.
        scale: zoom factor range of the rotation step.
        interpolation: the final resize of the image (labels: nearest).
        seed: seeds albumentations' generators (None: fresh entropy); see `SliceTransform.set_seed`.
        elastic_prob: probability of an elastic deformation (at the slice's own resolution,
            before the resize); 0 = never.
        elastic_alpha: its displacement scale (px per unit of the smoothed noise).
        elastic_sigma: the Gaussian smoothing of the displacement field, px (larger: smoother).
        gamma_prob: probability of the gamma curve (`GroupGamma`); 0 = never.
        gamma_range: its (low, high) gamma.
        channel_group: channels that share one gamma draw (2k + 1 for 2.5D input with k neighbours
            on each side: a modality's neighbouring slices get the same curve).

    Returns:
        (float (H, W), int (H, W)) -> (float32 (1, h, w), int64 (h, w)).
    """
    size = _size_hw(input_size)
    for name, value in (("rot_flip_prob", rot_flip_prob), ("rotate_prob", rotate_prob), ("elastic_prob", elastic_prob),
                        ("gamma_prob", gamma_prob)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value} is not a probability")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale={tuple(scale)} must satisfy 0 < low <= high")
    steps: list[A.BasicTransform | A.BaseCompose] = []
    if gamma_prob > 0:  # first: each group's range is the stored slice's, before zero-filled borders
        steps.append(GroupGamma(tuple(gamma_range), group_size=channel_group, p=gamma_prob))
    if rot_flip_prob > 0:
        orient: list[A.BasicTransform | A.BaseCompose] = [A.RandomRotate90(p=1.0)] if rot90 else []
        if flip_axis == "random":
            orient.append(A.OneOf([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)], p=1.0))
        elif flip_axis == "height":
            orient.append(A.VerticalFlip(p=1.0))
        elif flip_axis == "width":
            orient.append(A.HorizontalFlip(p=1.0))
        else:
            raise ValueError(f"flip_axis={flip_axis!r} is not one of 'random', 'height', 'width'")
        steps.append(A.Sequential(orient, p=rot_flip_prob))
    if rotate_prob > 0 and (rotate_limit > 0 or tuple(scale) != (1.0, 1.0)):
        steps.append(A.Affine(rotate=(-rotate_limit, rotate_limit), scale=tuple(scale),
                              interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                              border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=rotate_prob))
    if elastic_prob > 0:
        if not (elastic_alpha > 0 and elastic_sigma > 0):
            raise ValueError(f"elastic_alpha={elastic_alpha} and elastic_sigma={elastic_sigma} must be > 0")
        steps.append(A.ElasticTransform(alpha=elastic_alpha, sigma=elastic_sigma, interpolation=cv2.INTER_LINEAR,
                                        mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                                        fill=0, fill_mask=0, p=elastic_prob))
    steps.append(_resize(size, interpolation))
    return SliceTransform(A.Compose(steps, seed=seed), size)


def build_eval_transform(input_size: Sequence[int], interpolation: Interpolation = "bicubic") -> SliceTransform:
    """Resize only: (float (H, W), int (H, W)) -> (float32 (1, h, w), int64 (h, w))."""
    size = _size_hw(input_size)
    return SliceTransform(A.Compose([_resize(size, interpolation)]), size)
