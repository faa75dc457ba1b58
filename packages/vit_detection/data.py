"""COCO-format detection data: a JSON file + an image folder, read through pycocotools.

An item of `CocoDetection` is ``(image, target)``:

- image: float32 (3, h, w), normalised by the transform (without a transform: RGB in [0, 1]);
- target: a dict
  - "boxes": float32 (T, 4), normalised ``(cx, cy, w, h)`` relative to the augmented, unpadded
    image (h, w) (`vit_detection.transforms.coco_to_normalized_cxcywh` converts);
  - "labels": int64 (T,), contiguous class indices 0..C-1 (categories sorted by id);
  - "image_id": int, the COCO image id;
  - "orig_size": int64 (2,), (h0, w0) of the file on disk (post-processing scales boxes to it);
  - "size": int64 (2,), (h, w) after augmentation.

Annotation hygiene, done once when the file is read:

- category ids of any numbering (COCO's 1..90 with gaps) map to contiguous labels sorted by id;
- crowd annotations (``iscrowd: 1``) are no training targets (COCOeval still uses them to ignore
  the detections they cover);
- boxes are clipped to the image; boxes with a non-finite coordinate or no width or height left
  are dropped, with ONE warning per data set counting them;
- images without annotations stay (their target has (0, 4) boxes): they teach "no object" and
  count false positives at evaluation.

`CocoDetection.coco_gt` is the ground truth to evaluate against: the file's annotations less the
degenerate ones, with annotation ids renumbered when any is < 1 (pycocotools treats id 0 as
"unmatched") and ``iscrowd``/``area`` filled in where missing.

`collate_detection` pads a list of items into one batch with a padding mask (True = padding,
DETR's sign), and adds to each target its unpadded "image_hw" as plain Python ints: device placement
moves tensors only, so the model can size each image's token grid without reading the device.

Malformed files give one-line ``ValueError``/``FileNotFoundError`` messages naming the file and
the field. Images are decoded by `vit_training.data.read_rgb` (re-exported here).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from vit_training.data import find_bad_files, image_header_size, one_line, read_rgb
from vit_training.seeding import sample_seed

from .coco_eval import ground_truth_coco
from .transforms import DetectionTransform, coco_to_normalized_cxcywh

__all__ = [
    "CocoDetection",
    "DetectionTarget",
    "collate_detection",
    "load_coco_json",
    "pad_divisor",
    "read_rgb",
]

logger = logging.getLogger(__name__)

DetectionTarget = dict[str, Any]
Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO detection JSON and check the fields this package uses.

    Required: top-level ``images``, ``annotations``, ``categories`` lists; every image ``id``,
    ``file_name``, ``width``, ``height``; every annotation ``id``, ``image_id``,
    ``category_id``, ``bbox`` (4 numbers, COCO ``(x, y, w, h)`` in pixels); every category
    ``id`` and ``name``. Ids must be unique and references must resolve.

    Returns:
        The parsed dictionary, unchanged.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: one line naming the file and the offending field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({one_line(exc)})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images, annotations, categories; got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: missing field '{key}' (a COCO detection file has images, annotations, categories)")
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: field '{key}' must be a list, got {type(data[key]).__name__}")

    def need(entry: Any, section: str, index: int, field: str, kind: type | tuple[type, ...]) -> Any:
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {section}[{index}] must be an object, got {type(entry).__name__}")
        if field not in entry:
            raise ValueError(f"{path}: {section}[{index}] has no field '{field}'")
        value = entry[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ValueError(f"{path}: {section}[{index}].{field} must be {names}, got {value!r}")
        return value

    image_ids: set[int] = set()
    for i, image in enumerate(data["images"]):
        image_id = need(image, "images", i, "id", int)
        if image_id in image_ids:
            raise ValueError(f"{path}: images[{i}].id={image_id} is used by another image")
        image_ids.add(image_id)
        need(image, "images", i, "file_name", str)
        for side in ("width", "height"):
            if need(image, "images", i, side, int) < 1:
                raise ValueError(f"{path}: images[{i}].{side}={image[side]} must be >= 1")
    category_ids: set[int] = set()
    for i, category in enumerate(data["categories"]):
        category_id = need(category, "categories", i, "id", int)
        if category_id in category_ids:
            raise ValueError(f"{path}: categories[{i}].id={category_id} is used by another category")
        category_ids.add(category_id)
        need(category, "categories", i, "name", str)
    annotation_ids: set[int] = set()
    for i, annotation in enumerate(data["annotations"]):
        annotation_id = need(annotation, "annotations", i, "id", int)
        if annotation_id in annotation_ids:
            raise ValueError(f"{path}: annotations[{i}].id={annotation_id} is used by another annotation")
        annotation_ids.add(annotation_id)
        if need(annotation, "annotations", i, "image_id", int) not in image_ids:
            raise ValueError(f"{path}: annotations[{i}].image_id={annotation['image_id']} is not an image id")
        if need(annotation, "annotations", i, "category_id", int) not in category_ids:
            raise ValueError(f"{path}: annotations[{i}].category_id={annotation['category_id']} is not a category id")
        bbox = need(annotation, "annotations", i, "bbox", list)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise ValueError(f"{path}: annotations[{i}].bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        if annotation.get("iscrowd", 0) not in (0, 1):
            raise ValueError(f"{path}: annotations[{i}].iscrowd must be 0 or 1, got {annotation['iscrowd']!r}")
    return data


def _clip_xywh(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """`bbox` (x, y, w, h) clipped to the image, or None when non-finite or without area left."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


# A box may overhang its image by this many pixels (rounding in annotation tools) before it counts
# as outside the image.
BOX_TOLERANCE_PX = 1.0


def _box_problem(annotation: dict[str, Any], image: dict[str, Any]) -> str | None:
    """What is wrong with an annotation's box: no positive size, or not inside its image; None if fine."""
    x, y, w, h = (float(v) for v in annotation["bbox"])
    where = f"annotation id {annotation['id']} bbox {annotation['bbox']}"
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return f"{where} has no positive width and height"
    width, height, tol = image["width"], image["height"], BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"{where} lies outside the {width}x{height} (w x h) image"
    return None


# ------------------------------------------------------------------------------------ dataset
class CocoDetection(Dataset):
    """A COCO-format detection data set (see the module doc for items and annotation hygiene).

    Attributes:
        image_dir, annotation_file: where the data lives.
        ids: the image ids, sorted; item i is image ``ids[i]``.
        class_names: category names, index = label.
        label_to_category_id: the COCO category id of each label (list, index = label).
        category_id_to_label: the inverse mapping.
        num_classes: number of categories (DETR adds its "no object" class itself).
        num_degenerate: annotations dropped as degenerate; num_crowd: crowd annotations kept out
            of the targets.
        coco_gt: the pycocotools ground truth for `vit_detection.coco_eval.evaluate_coco`.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transform: DetectionTransform | Transform | None = None,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            image_dir: the folder the images' ``file_name`` entries are relative to.
            annotation_file: the COCO JSON (``instances_*.json``).
            transform: (uint8 (H, W, 3), COCO pixel boxes (T, 4), labels (T,)) -> (image tensor,
                normalised cxcywh boxes, labels), e.g. `build_detection_transforms`; None returns
                the image as float32 RGB in [0, 1] and converts the boxes only.
            seed: the run's seed for per-sample reseeding of the transform from (seed, epoch,
                index) (training); None leaves the transform's generators alone (evaluation).
        """
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image folder not found (for {self.annotation_file})")
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        # Set by the task under data.on_bad_sample=skip: an image that becomes unreadable after
        # the up-front check is replaced by the next readable one instead of stopping the run.
        self.skip_unreadable = False
        data = load_coco_json(self.annotation_file)

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_category_id: list[int] = [int(c["id"]) for c in categories]
        self.category_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.label_to_category_id)}
        self.class_names: list[str] = [str(c["name"]) for c in categories]

        self._images: dict[int, dict[str, Any]] = {int(im["id"]): im for im in data["images"]}
        self.ids: list[int] = sorted(self._images)
        boxes: dict[int, list[tuple[float, float, float, float]]] = {i: [] for i in self.ids}
        labels: dict[int, list[int]] = {i: [] for i in self.ids}
        kept_annotations: list[dict[str, Any]] = []
        self.num_degenerate = 0
        self.num_crowd = 0
        self.box_problems: list[tuple[str, str]] = []
        for annotation in data["annotations"]:
            image = self._images[annotation["image_id"]]
            problem = _box_problem(annotation, image)
            if problem is not None:
                self.box_problems.append((str(self.image_dir / image["file_name"]), f"{problem} ({self.annotation_file})"))
            clipped = _clip_xywh(annotation["bbox"], image["width"], image["height"])
            if clipped is None:
                self.num_degenerate += 1
                continue
            kept_annotations.append(annotation)
            if annotation.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            boxes[image["id"]].append(clipped)
            labels[image["id"]].append(self.category_id_to_label[annotation["category_id"]])
        if self.num_degenerate:
            warnings.warn(
                f"{self.annotation_file}: dropped {self.num_degenerate} of {len(data['annotations'])} annotations "
                f"with degenerate boxes (non-finite, or no width or height inside the image)",
                stacklevel=2,
            )
        self._boxes = {i: np.asarray(b, dtype=np.float32).reshape(-1, 4) for i, b in boxes.items()}
        self._labels = {i: np.asarray(v, dtype=np.int64) for i, v in labels.items()}
        self._gt_data = {**data, "annotations": kept_annotations}
        self._coco_gt: COCO | None = None

    # -------------------------------------------------------------------------------- metadata
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def coco_gt(self) -> COCO:
        """The ground truth to evaluate against (built on first use, then cached).

        The file's images and categories unchanged; its annotations less the degenerate ones (no
        prediction could match them), crowd ones included (COCOeval ignores detections on them);
        ``iscrowd`` defaults to 0 and ``area`` to w * h where missing (COCOeval needs both);
        annotation ids renumbered 1..N when any id is < 1, because pycocotools stores matches as
        ids with 0 meaning "unmatched" (an annotation with id 0 could never count as found).
        """
        if self._coco_gt is None:
            self._coco_gt = ground_truth_coco(copy.deepcopy(self._gt_data))
        return self._coco_gt

    def image_info(self, index: int) -> dict[str, Any]:
        """The JSON entry of item `index` (id, file_name, width, height, ...)."""
        return self._images[self.ids[index]]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.image_info(index)["file_name"]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the augmentation seeds are drawn for (the training loop calls it every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    # -------------------------------------------------------------------------------- validation
    def check_images(self) -> list[tuple[str, str]]:
        """Check every image's header (a thread pool, no pixel decode): it exists, PIL reads it,
        and its size is the JSON's width x height. Returns (path, one-line reason) per bad image."""
        names = [str(self.image_path(i)) for i in range(len(self))]

        def check(index: int) -> None:
            info = self.image_info(index)
            width, height = image_header_size(names[index])
            if (height, width) != (info["height"], info["width"]):
                raise ValueError(
                    f"image is {height}x{width} (h x w) but {self.annotation_file} says "
                    f"{info['height']}x{info['width']} for image id {info['id']}"
                )

        return find_bad_files(names, check)

    def drop_images(self, paths: set[str]) -> None:
        """Leave the images at `paths` out of the items (their annotations stay in `coco_gt`)."""
        self.ids = [i for i in self.ids if str(self.image_dir / self._images[i]["file_name"]) not in paths]

    def max_objects(self) -> int:
        """The most target boxes (crowd and degenerate ones excluded) in one image of the items."""
        return max((len(self._labels[i]) for i in self.ids), default=0)

    # -------------------------------------------------------------------------------- items
    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item `index` before any transform.

        Returns:
            image uint8 (H0, W0, 3) RGB; boxes float32 (T, 4) COCO ``(x, y, w, h)`` in pixels,
            clipped to the image, crowd and degenerate ones excluded; labels int64 (T,).

        Raises:
            FileNotFoundError / ValueError: the file is missing, undecodable, or its size differs
                from the JSON's width/height (the boxes would not fit it).
        """
        info = self.image_info(index)
        path = self.image_dir / info["file_name"]
        try:
            image = read_rgb(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{path}: image file not found (image id {info['id']} of {self.annotation_file})"
            ) from exc
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]} (h x w) but {self.annotation_file} says "
                f"{info['height']}x{info['width']} for image id {info['id']}"
            )
        image_id = self.ids[index]
        return image, self._boxes[image_id].copy(), self._labels[image_id].copy()

    def _load_readable(self, index: int) -> tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(item index, `load_sample`) of `index`, or of the next readable item under `skip_unreadable`."""
        for step in range(len(self) if self.skip_unreadable else 1):
            candidate = (index + step) % len(self)
            try:
                return candidate, self.load_sample(candidate)
            except (OSError, ValueError) as exc:
                if not self.skip_unreadable:
                    raise
                logger.warning("data.on_bad_sample=skip: %s; using the next image instead", one_line(exc))
        raise ValueError(f"{self.annotation_file}: no readable image left among {len(self)}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, DetectionTarget]:
        index, (image, boxes, labels) = self._load_readable(index)
        orig_size = torch.tensor(image.shape[:2], dtype=torch.int64)
        if self.transform is None:
            tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
            out_boxes = coco_to_normalized_cxcywh(boxes, image.shape[0], image.shape[1])
            out_labels = torch.from_numpy(labels)
        else:
            if self.seed is not None and hasattr(self.transform, "set_seed"):
                self.transform.set_seed(sample_seed(self.seed, self.epoch, index))
            tensor, out_boxes, out_labels = self.transform(image, boxes, labels)
        target: DetectionTarget = {
            "boxes": out_boxes,
            "labels": out_labels,
            "image_id": int(self.ids[index]),
            "orig_size": orig_size,
            "size": torch.tensor(tensor.shape[-2:], dtype=torch.int64),
        }
        return tensor, target

    def __repr__(self) -> str:
        return (
            f"CocoDetection({str(self.annotation_file)!r}, images={len(self)}, classes={self.num_classes}, "
            f"degenerate={self.num_degenerate}, crowd={self.num_crowd})"
        )


# ------------------------------------------------------------------------------------ batching
def pad_divisor(patch_size: int, pad_size_multiple: int | None = None) -> int:
    """The `size_divisor` of `collate_detection` for a backbone patch and ``data.pad_size_multiple``.

    The least common multiple of the two, so padded batches stay whole patches and fall on the
    requested grid of sizes (e.g. patch 16, multiple 128 -> 128; patch 8, multiple 20 -> 40).
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if pad_size_multiple is None:
        return int(patch_size)
    if pad_size_multiple < 1:
        raise ValueError(f"pad_size_multiple must be >= 1 (or None), got {pad_size_multiple}")
    return math.lcm(int(patch_size), int(pad_size_multiple))


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, DetectionTarget]], size_divisor: int = 1
) -> tuple[torch.Tensor, torch.Tensor, list[DetectionTarget]]:
    """Stack items of different sizes into one zero-padded batch with its padding mask.

    Use as ``DataLoader(..., collate_fn=functools.partial(collate_detection, size_divisor=16))``.

    Args:
        batch: (image float (3, h_i, w_i), target) pairs as `CocoDetection` returns them.
        size_divisor: the padded height and width are rounded up to a multiple of this (the
            backbone's patch size, so every token covers pixels of one kind; `pad_divisor` adds
            ``data.pad_size_multiple``, which keeps the number of batch shapes small).

    Returns:
        images: float (B, 3, H, W), each image at the top left, zeros at the bottom/right, with
            H = the batch's largest h_i and W its largest w_i, rounded up to `size_divisor`;
        pad_mask: bool (B, H, W), True on padding (DETR's sign; HF's ``pixel_mask`` is the opposite);
        targets: the targets (boxes stay relative to each image's own unpadded size), each with
            "image_hw": (h_i, w_i) Python ints, its unpadded size (the host copy of "size" that
            `DETR.forward` takes as `image_sizes`: no device read to find the token grids).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if size_divisor < 1:
        raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
    images = [item[0] for item in batch]
    for image in images:
        if image.ndim != 3:
            raise ValueError(f"expected (C, h, w) images, got shape {tuple(image.shape)}")
    channels = images[0].shape[0]
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    height = -(-height // size_divisor) * size_divisor
    width = -(-width // size_divisor) * size_divisor
    padded = images[0].new_zeros((len(images), channels, height, width))
    pad_mask = torch.ones((len(images), height, width), dtype=torch.bool)
    targets = []
    for i, (image, target) in enumerate(batch):
        h, w = image.shape[1:]
        padded[i, :, :h, :w] = image
        pad_mask[i, :h, :w] = False
        targets.append({**target, "image_hw": (int(h), int(w))})
    return padded, pad_mask, targets
