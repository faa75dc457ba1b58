"""Detection augmentation: albumentations pipelines that move the boxes with the pixels.

A `DetectionTransform` takes one sample as the data set reads it from disk and returns it as the
model and the loss want it:

- in:  image uint8 numpy (H0, W0, 3) RGB; boxes float32 (T, 4) COCO ``(x, y, w, h)`` in absolute
  pixels of that image; labels int64 (T,) contiguous class indices;
- out: image float32 tensor (3, h, w) normalised with mean/std; boxes float32 tensor (T', 4)
  normalised ``(cx, cy, w, h)`` relative to the augmented, unpadded (h, w); labels int64 (T',).
  T' <= T: boxes cut away by a crop, or left thinner than `min_box_side` pixels, are dropped
  together with their labels.

The box format changes in exactly one place, `coco_to_normalized_cxcywh`; everything before it
is COCO xywh in pixels (albumentations' ``"coco"`` format), everything after it normalised
cxcywh (DETR's target format).

Pipelines (`build_detection_transforms`), after DETR's ``make_coco_transforms``:

- train: horizontal flip -> (optional vertical flip) -> with probability `crop_prob` a random-size
  crop that keeps at least one box whole (`RandomSizeCropWithBox`) -> scale jitter: short side
  resized to one of `train_sizes`, long side capped at `max_size` (`ResizeShortSide`) ->
  normalise -> tensor. DETR resizes before and after its crop; one resize after the crop gives the
  same output sizes with half the interpolation.
- eval: short side resized to `eval_size`, long side capped at `max_size` -> normalise -> tensor.
  No crop, so normalised boxes are relative to the original image too: post-processing scales
  them by the original size.

Random draws come from albumentations' own generators (not torch's or numpy's global ones);
`DetectionTransform.set_seed` reseeds them, which `vit_detection.data.CocoDetection` does per
sample from (seed, epoch, index).

albumentations asks PyPI for updates on import unless ``NO_ALBUMENTATIONS_UPDATE=1`` is set;
this module sets it (when unset) before importing albumentations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Annotated, Any, Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.augmentations.crops.transforms import BaseCrop  # noqa: E402
from albumentations.augmentations.geometric import functional as fgeometric  # noqa: E402
from albumentations.core.transforms_interface import BaseTransformInitSchema  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from pydantic import Field  # noqa: E402

from vit_training.seeding import SampleRandomState  # noqa: E402

__all__ = [
    "COCO_EVAL_SIZE",
    "COCO_MAX_SIZE",
    "COCO_TRAIN_SIZES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectionTransform",
    "RandomSizeCropWithBox",
    "ResizeShortSide",
    "build_detection_transforms",
    "coco_to_normalized_cxcywh",
    "resized_shape",
]

# DETR's COCO recipe (datasets/coco.py): short side 480..800 in steps of 32, long side <= 1333.
COCO_TRAIN_SIZES: tuple[int, ...] = tuple(range(480, 801, 32))
COCO_EVAL_SIZE = 800
COCO_MAX_SIZE = 1333
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Interpolation = Literal["bilinear", "bicubic", "area"]
_CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


# ------------------------------------------------------------------------------------ box format
def coco_to_normalized_cxcywh(boxes: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """THE box-format change of the detection data: COCO pixels -> normalised centre boxes.

    Args:
        boxes: (T, 4) COCO ``(x_min, y_min, w, h)`` in absolute pixels of an image `height` x `width`.
        height, width: the image size the boxes refer to (the augmented, unpadded image).

    Returns:
        float32 (T, 4) ``(cx, cy, w, h)``, each divided by the image side it runs along (x and w by
        `width`, y and h by `height`), so a box covering the whole image is (0.5, 0.5, 1, 1).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    xywh = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    centre = xywh[:, :2] + xywh[:, 2:] / 2
    cxcywh = torch.cat([centre, xywh[:, 2:]], dim=1)
    return cxcywh / torch.tensor([width, height, width, height], dtype=torch.float32)


# ------------------------------------------------------------------------------------ resizing
def resized_shape(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """The (h, w) `ResizeShortSide` gives: short side -> `short_side`, long side capped at `max_size`.

    Matches DETR's ``get_size_with_aspect_ratio`` up to rounding: the scale is
    ``min(short_side / min(h, w), max_size / max(h, w))`` and each side is ``round(side * scale)``
    (at least 1), so the constrained side comes out exactly.
    """
    scale = _short_side_scale(height, width, short_side, max_size)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _short_side_scale(height: int, width: int, short_side: int, max_size: int | None) -> float:
    scale = short_side / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


class ResizeShortSide(A.DualTransform):
    """Resize keeping the aspect ratio: short side to a size drawn from `sizes`, long side <= `max_size`.

    albumentations' SmallestMaxSize + LongestMaxSize cannot express "cap the long side only when
    it is too long" (LongestMaxSize also enlarges), so this one transform does DETR's rule.
    Boxes are stored normalised inside albumentations, so they need no change here.

    Args:
        sizes: candidate short sides; one is drawn per call (a single value: a fixed resize).
        max_size: the longest side allowed after resizing; None for no cap.
        interpolation: "bilinear", "bicubic" or "area" (OpenCV's).
        p: probability of resizing at all.
    """

    class InitSchema(BaseTransformInitSchema):
        sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
        max_size: Annotated[int, Field(ge=1)] | None
        interpolation: Interpolation

    def __init__(
        self,
        sizes: int | Sequence[int],
        max_size: int | None = None,
        interpolation: Interpolation = "bilinear",
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.sizes = [int(sizes)] if isinstance(sizes, int) else [int(s) for s in sizes]
        self.max_size = max_size
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short_side = self.py_random.choice(self.sizes)
        return {"out_shape": resized_shape(height, width, short_side, self.max_size)}

    def apply(self, img: np.ndarray, out_shape: tuple[int, int], **params: Any) -> np.ndarray:
        if img.shape[:2] == tuple(out_shape):
            return img
        return fgeometric.resize(img, out_shape, interpolation=_CV2_INTERPOLATION[self.interpolation])

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # normalised coordinates do not change under a resize

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("sizes", "max_size", "interpolation")


# ------------------------------------------------------------------------------------ cropping
class RandomSizeCropWithBox(BaseCrop):
    """A crop of random size that contains at least one box whole (DETR's RandomSizeCrop, made safe).

    Each side of the crop is drawn uniformly between `min_scale` times the image side and the
    whole side; one box is chosen at random and the crop is placed (at a random position) so it
    contains that box, grown where the box is larger than the drawn size. Other boxes are clipped
    to the crop (albumentations' BboxParams then drops those left too small or too hidden). An
    image without boxes gets a plain random crop of the drawn size.

    albumentations' AtLeastOneBBoxRandomCrop does the placement but takes one fixed crop size,
    which cannot serve images of different sizes; BBoxSafeRandomCrop keeps *every* box, which
    on densely annotated images (tree tiles) never crops at all.

    Args:
        min_scale: smallest crop side as a fraction of the image side, in (0, 1].
        p: probability of cropping.
    """

    class InitSchema(BaseTransformInitSchema):
        min_scale: float = Field(gt=0, le=1)

    def __init__(self, min_scale: float = 0.6, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.min_scale = min_scale

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        crop_h = self.py_random.randint(min(height, math.ceil(self.min_scale * height)), height)
        crop_w = self.py_random.randint(min(width, math.ceil(self.min_scale * width)), width)
        bboxes = data.get("bboxes")
        if bboxes is None or len(bboxes) == 0:
            y0 = self.py_random.randint(0, height - crop_h)
            x0 = self.py_random.randint(0, width - crop_w)
            return {"crop_coords": (x0, y0, x0 + crop_w, y0 + crop_h)}
        # Boxes arrive in albumentations' normalised (x_min, y_min, x_max, y_max, ...) form.
        x1, y1, x2, y2 = (float(v) for v in bboxes[self.py_random.randrange(len(bboxes)), :4])
        x0, crop_w = self._place(x1 * width, x2 * width, crop_w, width)
        y0, crop_h = self._place(y1 * height, y2 * height, crop_h, height)
        return {"crop_coords": (x0, y0, x0 + crop_w, y0 + crop_h)}

    def _place(self, low: float, high: float, crop: int, side: int) -> tuple[int, int]:
        """An integer start and length along one axis so [start, start + length) holds [low, high]."""
        first = max(0, min(side - 1, math.floor(low)))
        last = max(first + 1, min(side, math.ceil(high)))
        crop = max(crop, last - first)
        start_min = max(0, last - crop)
        start_max = min(first, side - crop)
        return self.py_random.randint(start_min, max(start_min, start_max)), crop

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_scale",)


# ------------------------------------------------------------------------------------ pipelines
class DetectionTransform:
    """One albumentations pipeline as a plain callable on (image, boxes, labels); see the module doc.

    The albumentations object stays reachable as `pipeline` (to print, serialise or reseed it).
    """

    def __init__(self, pipeline: A.Compose) -> None:
        """
        Args:
            pipeline: an ``A.Compose`` with ``bbox_params`` in "coco" format and a ``labels``
                label field, ending in ToTensorV2 (as `build_detection_transforms` makes).
        """
        self.pipeline = pipeline
        self._random_state = SampleRandomState()

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            image: uint8 (H0, W0, 3) RGB.
            boxes: (T, 4) COCO xywh in pixels, inside the image with positive width and height
                (`CocoDetection` clips and filters them before they get here).
            labels: (T,) integer class indices.

        Returns:
            image float32 (3, h, w) normalised; boxes float32 (T', 4) normalised cxcywh relative to
            (h, w); labels int64 (T',).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"transform expects a uint8 (H, W, 3) RGB image, got {image.shape} {image.dtype}")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        # albumentations 2.0.8 turns Python-list integer labels into floats; a numpy int64 array survives.
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes but {len(labels)} labels")
        out = self.pipeline(image=image, bboxes=boxes, labels=labels)
        tensor: torch.Tensor = out["image"]
        height, width = tensor.shape[-2:]
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        # BboxParams already drops boxes thinner than min_box_side; this only guards the conversion.
        keep = (out_boxes[:, 2] > 0) & (out_boxes[:, 3] > 0)
        cxcywh = coco_to_normalized_cxcywh(out_boxes[keep], int(height), int(width))
        return tensor, cxcywh, torch.from_numpy(out_labels[keep].copy())

    def set_seed(self, seed: int | None) -> None:
        """Reseed albumentations' generators. `CocoDetection` calls this per sample (seed, epoch,
        index), so DataLoader workers and resumed runs draw the same augmentation for a sample."""
        self._random_state.seed_pipeline(self.pipeline, seed)

    def __repr__(self) -> str:
        return f"DetectionTransform(pipeline={self.pipeline!r})"


def _normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    """(x / 255 - mean) / std per RGB channel."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 3:
            raise ValueError(f"{name} must hold 3 values (RGB), got {values}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return A.Normalize(mean=mean, std=std, max_pixel_value=255.0)


def build_detection_transforms(
    train: bool,
    train_sizes: Sequence[int] = COCO_TRAIN_SIZES,
    eval_size: int = COCO_EVAL_SIZE,
    max_size: int | None = COCO_MAX_SIZE,
    hflip: float = 0.5,
    vflip: float = 0.0,
    crop_prob: float = 0.5,
    crop_min_scale: float = 0.6,
    min_visibility: float = 0.0,
    min_box_side: float = 0.01,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: Interpolation = "bilinear",
    seed: int | None = None,
) -> DetectionTransform:
    """The training or evaluation pipeline (see the module doc for the steps).

    Args:
        train: the augmenting training pipeline, or the deterministic evaluation one.
        train_sizes: short sides drawn per training image (DETR on COCO: 480..800 step 32; the
            CPU demo on ~160 px scenes: e.g. 128..192).
        eval_size: short side at evaluation (DETR on COCO: 800).
        max_size: cap on the long side after resizing, train and eval (DETR: 1333); None: no cap.
        hflip: horizontal flip probability (train).
        vflip: vertical flip probability (train); 0 for natural images, useful for aerial ones.
        crop_prob: probability of the random-size crop that keeps a box whole (train; DETR: 0.5).
        crop_min_scale: smallest crop side as a fraction of the image side.
        min_visibility: boxes keeping less than this fraction of their area after a crop are
            dropped (DETR keeps any remainder: 0).
        min_box_side: boxes narrower or lower than this many pixels after any step are dropped
            (removes the zero-size remains of boxes a crop cut away).
        mean, std: per-channel statistics of 0..1 RGB pixels.
        interpolation: of the resize.
        seed: seeds albumentations' generators (None: fresh entropy); see `DetectionTransform.set_seed`.

    Returns:
        A `DetectionTransform`: (uint8 image, COCO pixel boxes, labels) -> (float32 (3, h, w),
        normalised cxcywh boxes, labels).
    """
    sizes = [int(s) for s in train_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"train_sizes must hold at least one positive size, got {list(train_sizes)}")
    if eval_size < 1:
        raise ValueError(f"eval_size must be >= 1, got {eval_size}")
    if max_size is not None and max_size < max(*sizes, eval_size):
        raise ValueError(f"max_size={max_size} must be >= every short side (train_sizes {sizes}, eval_size {eval_size})")
    for name, value in (("hflip", hflip), ("vflip", vflip), ("crop_prob", crop_prob), ("min_visibility", min_visibility)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if not 0 < crop_min_scale <= 1:
        raise ValueError(f"crop_min_scale must lie in (0, 1], got {crop_min_scale}")
    if interpolation not in _CV2_INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(_CV2_INTERPOLATION)}, got {interpolation!r}")

    steps: list[A.BasicTransform] = []
    if train:
        if hflip > 0:
            steps.append(A.HorizontalFlip(p=hflip))
        if vflip > 0:
            steps.append(A.VerticalFlip(p=vflip))
        if crop_prob > 0:
            steps.append(RandomSizeCropWithBox(min_scale=crop_min_scale, p=crop_prob))
        steps.append(ResizeShortSide(sizes, max_size, interpolation))
    else:
        steps.append(ResizeShortSide([eval_size], max_size, interpolation))
    steps += [_normalize(mean, std), ToTensorV2()]
    bbox_params = A.BboxParams(
        format="coco",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_width=min_box_side,
        min_height=min_box_side,
        clip=True,  # boxes leaving the image after a step are clipped to it ...
        filter_invalid_bboxes=True,  # ... and those left degenerate are dropped
    )
    return DetectionTransform(A.Compose(steps, bbox_params=bbox_params, seed=seed))
