"""Demo detection data written the way users bring theirs: COCO JSON + image folders.

Both builders write::

    output_dir/
      train/<images>            val/<images>
      annotations/instances_train.json   annotations/instances_val.json
      summary.json              (what was built, from what, with which parameters)

which `vit_detection.data.CocoDetection(output_dir / "train", output_dir /
"annotations/instances_train.json")` reads back. Category ids start at 1 and annotation ids at 1
(pycocotools cannot match id 0); ``area`` is the box area w * h (no masks here); ``iscrowd`` is 0.

- `prepare_tree_tiles`: the real aerial images with hand-drawn tree crowns bundled in the PyPI
  package ``deepforest==2.1.0`` (4 annotated images, 951 boxes, 400 to 2472 px), cut into tiles.
- `prepare_fashion_scenes`: scenes composed from real Fashion-MNIST objects (the IDX files of
  the Debian package ``dataset-fashion-mnist``), thousands of images with exact boxes: DETR
  trained from scratch needs far more boxes than 56 tree tiles hold.

Output is built in a hidden sibling folder and renamed into place at the end, so an interrupted
run leaves no half-written data set and can simply be run again. Running again with the same
parameters returns the stored summary without rebuilding; other parameters need ``overwrite=True``.
Run one prepare per output folder at a time.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from vit_training.data import DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, read_idx

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "find_deepforest_data",
    "prepare_fashion_scenes",
    "prepare_tree_tiles",
    "read_voc_boxes",
]

DEEPFOREST_PIP = "pip install --no-deps deepforest==2.1.0"
# Training scenes `prepare_fashion_scenes` writes by default (the 20-minute detection recipe trains on
# all of them; the CLI's help and the budget benchmark read it from here).
SCENES_NUM_TRAIN = 24000

ImageFormat = Literal["jpg", "png"]


# ------------------------------------------------------------------------------------ writing
def _coco_json(images: list[dict], annotations: list[dict], categories: list[dict], description: str) -> dict:
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _save_image(array: np.ndarray, path: Path, image_format: ImageFormat) -> None:
    """uint8 (H, W, 3) RGB -> file. JPEG at quality 95; PNG at a fast compression level."""
    image = Image.fromarray(array)
    if image_format == "jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG", compress_level=1)


@contextmanager
def _building(output_dir: Path, parameters: dict[str, Any], overwrite: bool) -> Iterator[tuple[Path, dict | None]]:
    """Yield (a fresh temporary folder to build in, None), or (output_dir, stored summary) when the
    same data set is already there. On success the temporary folder replaces `output_dir`."""
    summary_path = output_dir / "summary.json"
    if output_dir.exists() and not overwrite:
        if summary_path.is_file():
            stored = json.loads(summary_path.read_text())
            if stored.get("parameters") == parameters:
                yield output_dir, stored
                return
            raise FileExistsError(
                f"{output_dir}: holds a data set built with other parameters ({stored.get('parameters')}); "
                f"pass overwrite=True to rebuild it"
            )
        raise FileExistsError(f"{output_dir}: exists and is not a prepared data set (no summary.json); "
                              f"pass overwrite=True to replace it")
    temporary = output_dir.parent / f".{output_dir.name}.partial"
    if temporary.exists():
        shutil.rmtree(temporary)  # left by an interrupted run
    temporary.mkdir(parents=True)
    try:
        yield temporary, None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(temporary, output_dir)


def _split_summary(root: Path, split: str, images: list[dict], annotations: list[dict]) -> dict[str, Any]:
    return {
        "images": len(images),
        "boxes": len(annotations),
        "image_dir": str(root / split),
        "annotation_file": str(root / "annotations" / f"instances_{split}.json"),
    }


def _finish(build_dir: Path, output_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json (with the paths the data will have after the rename) and return it."""
    for split in summary["splits"].values():
        for key in ("image_dir", "annotation_file"):
            split[key] = str(output_dir / Path(split[key]).relative_to(build_dir))
    summary["output_dir"] = str(output_dir)
    _write_json(build_dir / "summary.json", summary)
    return summary


# ------------------------------------------------------------------------------------ trees
def find_deepforest_data(data_dir: str | os.PathLike | None = None) -> Path:
    """The ``data`` folder of the installed deepforest package (located, never imported).

    Args:
        data_dir: use this folder instead (a copy of deepforest's data elsewhere).

    Raises:
        FileNotFoundError: deepforest is not installed (the message gives the pip command), or
            the folder holds no Pascal-VOC ``.xml`` annotations.
    """
    if data_dir is None:
        # find_spec locates the package without running its __init__ (which imports torch
        # lightning and friends that --no-deps leaves out).
        spec = importlib.util.find_spec("deepforest")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the deepforest package is not installed: {DEEPFOREST_PIP}")
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    else:
        folder = Path(data_dir)
    if not folder.is_dir() or not any(folder.glob("*.xml")):
        raise FileNotFoundError(f"{folder}: no Pascal-VOC .xml annotations here (expected deepforest's data folder; "
                                f"{DEEPFOREST_PIP})")
    return folder


def read_voc_boxes(xml_path: str | os.PathLike) -> tuple[str, tuple[int, int], np.ndarray, list[str]]:
    """Read one Pascal-VOC annotation file.

    Coordinates are read as pixel edges, as deepforest writes and reads them: a box spans
    ``[xmin, xmax) x [ymin, ymax)``, width ``xmax - xmin``.

    Returns:
        (image file name, (height, width) from <size>, boxes float32 (T, 4) (x0, y0, x1, y1),
        the <name> of each object).

    Raises:
        ValueError: one line naming the file and the missing or malformed field.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{xml_path}: not valid XML ({exc})") from exc

    def number(node: ET.Element, field: str, where: str) -> float:
        text = node.findtext(field)
        if text is None:
            raise ValueError(f"{xml_path}: {where} has no <{field}>")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{xml_path}: {where}/<{field}> is {text!r}, expected a number") from None

    filename = root.findtext("filename")
    if not filename:
        raise ValueError(f"{xml_path}: no <filename>")
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: no <size>")
    shape = (int(number(size, "height", "<size>")), int(number(size, "width", "<size>")))
    boxes, names = [], []
    for i, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: <object> {i} has no <bndbox>")
        where = f"<object> {i} <bndbox>"
        boxes.append([number(box, k, where) for k in ("xmin", "ymin", "xmax", "ymax")])
        names.append(obj.findtext("name") or "")
    return filename, shape, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), names


def _tile_starts(side: int, max_tile: int) -> list[tuple[int, int]]:
    """Equal, non-overlapping tiles covering `side`: as few as fit in `max_tile`, sizes differing by <= 1."""
    count = math.ceil(side / max_tile)
    edges = [round(i * side / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1]) for i in range(count)]


def _source_image(folder: Path, filename: str, xml_path: Path) -> Path:
    """The image an XML file names; deepforest ships some as .png beside a .tif name, so try both."""
    candidate = folder / filename
    if candidate.is_file():
        return candidate
    for suffix in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
        alternative = (folder / filename).with_suffix(suffix)
        if alternative.is_file():
            return alternative
    raise FileNotFoundError(f"{xml_path}: its image {filename} is not in {folder}")


def prepare_tree_tiles(
    output_dir: str | os.PathLike,
    max_tile: int = 400,
    val_fraction: float = 0.2,
    min_visible: float = 0.5,
    keep_empty_tiles: bool = True,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tile deepforest's annotated aerial images into a COCO detection set with one class, "tree".

    Every image that has a Pascal-VOC XML file is cut into the fewest equal tiles of at most
    `max_tile` px a side (2299 x 2472 -> 6 x 7 tiles of about 383 x 353); boxes are clipped to each
    tile and kept when they keep at least `min_visible` of their area. deepforest's labels
    ("Tree", "Alive", "Dead") all become the one category ``tree`` (id 1); the original name
    stays in each annotation as ``source_label``.

    Split: per source image, a seeded random `val_fraction` of its tiles (rounded; an image of
    one tile stays in train) goes to val, so both splits see every scene. Neighbouring tiles
    share trees cut at their border, so val numbers are optimistic compared with an unseen scene.

    Tiles without boxes are kept by default: they are real negatives (DETR learns "no object"
    from them and COCOeval counts false positives on them).

    Args:
        output_dir: where the data set goes (see the module doc).
        max_tile: largest tile side in pixels.
        val_fraction: share of each image's tiles held out, in [0, 1).
        min_visible: least fraction of a box's area inside a tile for it to be kept there, in (0, 1].
        keep_empty_tiles: keep tiles without any box.
        seed: seeds the split.
        data_dir: deepforest's data folder; None finds the installed package's.
        overwrite: rebuild even when `output_dir` exists.

    Returns:
        The summary (also written to ``summary.json``): splits with image/box counts and paths,
        categories, per-source tile and box counts, parameters.
    """
    if max_tile < 32:
        raise ValueError(f"max_tile must be >= 32, got {max_tile}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if not 0 < min_visible <= 1:
        raise ValueError(f"min_visible must lie in (0, 1], got {min_visible}")
    folder = find_deepforest_data(data_dir)
    output_dir = Path(output_dir)
    parameters = {"max_tile": max_tile, "val_fraction": val_fraction, "min_visible": min_visible,
                  "keep_empty_tiles": keep_empty_tiles, "seed": seed}
    with _building(output_dir, parameters, overwrite) as (build_dir, stored):
        if stored is not None:
            return stored
        summary = _build_tree_tiles(build_dir, folder, max_tile, val_fraction, min_visible, keep_empty_tiles, seed)
        return _finish(build_dir, output_dir, {**summary, "parameters": parameters})


def _build_tree_tiles(
    build_dir: Path, folder: Path, max_tile: int, val_fraction: float, min_visible: float,
    keep_empty_tiles: bool, seed: int,
) -> dict[str, Any]:
    """`prepare_tree_tiles`'s work, in `build_dir`; returns the summary less its parameters."""
    categories = [{"id": 1, "name": "tree", "supercategory": "plant"}]
    splits: dict[str, tuple[list[dict], list[dict]]] = {"train": ([], []), "val": ([], [])}
    for split in splits:
        (build_dir / split).mkdir()
    sources = []
    for source_index, xml_path in enumerate(sorted(folder.glob("*.xml"))):
        filename, (height, width), boxes, names = read_voc_boxes(xml_path)
        image_path = _source_image(folder, filename, xml_path)
        with Image.open(image_path) as opened:
            image = np.asarray(opened.convert("RGB"))
        if image.shape[:2] != (height, width):
            raise ValueError(f"{xml_path}: <size> says {height}x{width} (h x w) but {image_path.name} is "
                             f"{image.shape[0]}x{image.shape[1]}")
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        tiles = [(y, x) for y in _tile_starts(height, max_tile) for x in _tile_starts(width, max_tile)]
        rng = np.random.default_rng([seed, source_index])
        num_val = round(len(tiles) * val_fraction) if len(tiles) > 1 else 0
        val_tiles = set(rng.permutation(len(tiles))[:num_val].tolist())
        kept_tiles = kept_boxes = 0
        for tile_index, ((y0, y1), (x0, x1)) in enumerate(tiles):
            clipped = np.stack([
                np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
                np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1),
            ], axis=1) - np.array([x0, y0, x0, y0], dtype=np.float32)
            inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]) & (inside >= min_visible * areas)
            if not keep.any() and not keep_empty_tiles:
                continue
            split = "val" if tile_index in val_tiles else "train"
            images, annotations = splits[split]
            tile_name = f"{image_path.stem}_y{y0:04d}_x{x0:04d}.png"
            _save_image(np.ascontiguousarray(image[y0:y1, x0:x1]), build_dir / split / tile_name, "png")
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": tile_name, "width": x1 - x0, "height": y1 - y0,
                           "source_file": image_path.name, "tile_origin": [x0, y0]})
            for box, name in zip(clipped[keep].tolist(), np.asarray(names, dtype=object)[keep].tolist(),
                                 strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0,
                                    "source_label": name})
            kept_tiles += 1
            kept_boxes += int(keep.sum())
        sources.append({"file": image_path.name, "height": height, "width": width, "boxes": len(boxes),
                        "tiles": kept_tiles, "tile_boxes": kept_boxes})
    (build_dir / "annotations").mkdir()
    summary_splits = {}
    for split, (images, annotations) in splits.items():
        data = _coco_json(images, annotations, categories,
                          f"deepforest 2.1.0 aerial tree crowns, tiles of <= {max_tile} px ({split})")
        _write_json(build_dir / "annotations" / f"instances_{split}.json", data)
        summary_splits[split] = _split_summary(build_dir, split, images, annotations)
    return {"dataset": "tree_tiles", "source": str(folder), "categories": categories,
            "splits": summary_splits, "sources": sources}


# ------------------------------------------------------------------------------------ fashion
def _fashion_split(root: Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name in FASHION_MNIST_FILES[split]:
        candidates = [root / f"{name}{suffix}" for suffix in (".gz", "")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{root}: no {candidates[0].name} (Fashion-MNIST IDX files; on Debian/Ubuntu "
                f"`apt-get install dataset-fashion-mnist` puts them in {DEBIAN_FASHION_MNIST_DIR})"
            )
        arrays.append(read_idx(path))
    images, labels = arrays
    if (images.dtype != np.uint8 or labels.dtype != np.uint8 or images.ndim != 3 or labels.shape != (len(images),)
            or labels.max(initial=0) >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{root}: {split} images {images.shape} {images.dtype} and labels {labels.shape} "
                         f"{labels.dtype} do not match Fashion-MNIST (N x 28 x 28 uint8, N uint8 labels in 0..9)")
    return images, labels


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with (K, 4) xywh boxes."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2])
    y1 = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (box[2] * box[3] + others[:, 2] * others[:, 3] - inter)


# Pixels of a scaled object below this (of 255) are background: they are neither pasted nor boxed,
# so the box is exactly the extent of what is drawn.
_OBJECT_THRESHOLD = 16


def _compose_scene(
    rng: np.random.Generator,
    objects: np.ndarray,
    labels: np.ndarray,
    canvas_range: tuple[int, int],
    object_size: tuple[int, int],
    objects_per_image: tuple[int, int],
    max_overlap: float,
    background: str,
) -> tuple[np.ndarray, list[list[float]], list[int]]:
    """One scene: uint8 (H, W, 3) RGB, boxes [x, y, w, h] (integers as floats), labels 0..9."""
    height, width = (int(v) for v in rng.integers(canvas_range[0], canvas_range[1] + 1, size=2))
    base = rng.integers(0, 80, size=3, dtype=np.uint8)
    if background == "noise":
        # Uniform uint8 noise of 0..40 on a base below 80 cannot overflow: no clipping, no float image,
        # several times faster to draw than Gaussian noise and as good a distraction here.
        canvas = rng.integers(0, 41, size=(height, width, 3), dtype=np.uint8)
        canvas += base
    else:
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        canvas[:] = base
    boxes: list[list[float]] = []
    classes: list[int] = []
    placed = np.zeros((0, 4), dtype=np.float64)
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        index = int(rng.integers(len(objects)))
        side = int(rng.integers(object_size[0], object_size[1] + 1))
        interpolation = cv2.INTER_AREA if side < objects.shape[1] else cv2.INTER_LINEAR
        scaled = cv2.resize(objects[index], (side, side), interpolation=interpolation)
        mask = scaled >= _OBJECT_THRESHOLD
        if not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        patch, mask = scaled[top:bottom, left:right], mask[top:bottom, left:right]
        box_h, box_w = patch.shape
        if box_h > height or box_w > width:
            continue
        # Random colour per object (class is in the shape, never in the colour), bright enough to
        # stand out of the dark background.
        colour = rng.uniform(0.55, 1.0, size=3)
        rgb = np.clip(np.rint(patch[:, :, None] * colour), 0, 255).astype(np.uint8)
        for _attempt in range(30):
            x = int(rng.integers(0, width - box_w + 1))
            y = int(rng.integers(0, height - box_h + 1))
            box = np.array([x, y, box_w, box_h], dtype=np.float64)
            if len(placed) == 0 or _iou(box, placed).max() <= max_overlap:
                break
        else:
            continue  # no free spot: skip this object rather than break the overlap limit
        region = canvas[y:y + box_h, x:x + box_w]
        region[mask] = rgb[mask]  # opaque where the object is: a later object may hide part of an earlier one
        placed = np.vstack([placed, box])
        boxes.append([float(x), float(y), float(box_w), float(box_h)])
        classes.append(int(labels[index]))
    return canvas, boxes, classes


def prepare_fashion_scenes(
    output_dir: str | os.PathLike,
    num_train: int = SCENES_NUM_TRAIN,
    num_val: int = 500,
    canvas_range: tuple[int, int] = (64, 96),
    object_size: tuple[int, int] = (16, 36),
    objects_per_image: tuple[int, int] = (2, 4),
    max_overlap: float = 0.3,
    background: Literal["noise", "plain"] = "noise",
    image_format: ImageFormat = "jpg",
    seed: int = 0,
    fashion_mnist_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Compose detection scenes from real Fashion-MNIST objects, with exact boxes.

    Each scene is a canvas of random height and width in `canvas_range` with a dark plain or
    noisy background; on it `objects_per_image` Fashion-MNIST items, each scaled to a random
    side in `object_size` (28 px originals), tinted a random colour and pasted where its box
    overlaps every earlier box with IoU <= `max_overlap` (an object without a free spot after
    30 tries is skipped). The box is the extent of the pixels actually pasted (those >= 16/255
    after scaling), so it is tight and exact. Train scenes use the training IDX split, val
    scenes the test split: no object appears in both. The 10 classes are categories 1..10 with
    Fashion-MNIST's names.

    Deterministic for a seed: scene i of a split depends only on (seed, split, i), so the first
    scenes of a larger build equal those of a smaller one.

    Args:
        output_dir: where the data set goes (see the module doc).
        num_train, num_val: scenes per split. 24,000 training scenes (about 190 MB)
            hold about 72,000 objects drawn from the 60,000 Fashion-MNIST training items; a
            detector trained for 20 minutes on 2 cores sees each scene a few times (fewer scenes,
            each seen more often, gave a lower AP).
        canvas_range: (smallest, largest) canvas side in pixels, drawn per side and scene.
        object_size: (smallest, largest) scaled object side in pixels.
        objects_per_image: (fewest, most) objects tried per scene.
        max_overlap: largest IoU between any two boxes of a scene.
        background: "noise" (a random dark colour plus uniform noise of 0..40) or "plain".
        image_format: "jpg" (quality 95, small files) or "png" (lossless).
        seed: the generator seed.
        fashion_mnist_dir: the folder of the four IDX files; None uses the Debian package's
            `DEBIAN_FASHION_MNIST_DIR`.
        overwrite: rebuild even when `output_dir` exists.

    Returns:
        The summary (also written to ``summary.json``): splits with image/box counts and paths,
        categories, parameters.
    """
    if num_train < 1 or num_val < 0:
        raise ValueError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
    if not 32 <= canvas_range[0] <= canvas_range[1]:
        raise ValueError(f"canvas_range must be (low, high) with 32 <= low <= high, got {canvas_range}")
    if not 8 <= object_size[0] <= object_size[1] <= canvas_range[0]:
        raise ValueError(f"object_size must be (low, high) with 8 <= low <= high <= canvas_range[0], got {object_size}")
    if not 1 <= objects_per_image[0] <= objects_per_image[1]:
        raise ValueError(f"objects_per_image must be (low, high) with 1 <= low <= high, got {objects_per_image}")
    if not 0 <= max_overlap <= 1:
        raise ValueError(f"max_overlap must lie in [0, 1], got {max_overlap}")
    if background not in ("noise", "plain"):
        raise ValueError(f"background must be 'noise' or 'plain', got {background!r}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    root = Path(fashion_mnist_dir) if fashion_mnist_dir is not None else DEBIAN_FASHION_MNIST_DIR
    output_dir = Path(output_dir)
    parameters = {"num_train": num_train, "num_val": num_val, "canvas_range": list(canvas_range),
                  "object_size": list(object_size), "objects_per_image": list(objects_per_image),
                  "max_overlap": max_overlap, "background": background, "image_format": image_format, "seed": seed}
    sources = {"train": _fashion_split(root, "train"), "val": _fashion_split(root, "test")}
    with _building(output_dir, parameters, overwrite) as (build_dir, stored):
        if stored is not None:
            return stored
        summary = _build_fashion_scenes(build_dir, sources, root, num_train, num_val, canvas_range, object_size,
                                        objects_per_image, max_overlap, background, image_format, seed)
        return _finish(build_dir, output_dir, {**summary, "parameters": parameters})


def _build_fashion_scenes(
    build_dir: Path, sources: dict[str, tuple[np.ndarray, np.ndarray]], root: Path, num_train: int, num_val: int,
    canvas_range: tuple[int, int], object_size: tuple[int, int], objects_per_image: tuple[int, int],
    max_overlap: float, background: str, image_format: ImageFormat, seed: int,
) -> dict[str, Any]:
    """`prepare_fashion_scenes`'s work, in `build_dir`; returns the summary less its parameters."""
    categories = [{"id": i + 1, "name": name, "supercategory": "clothing"}
                  for i, name in enumerate(FASHION_MNIST_CLASSES)]
    (build_dir / "annotations").mkdir()
    summary_splits = {}
    for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        objects, labels = sources[split]
        (build_dir / split).mkdir()
        images: list[dict] = []
        annotations: list[dict] = []
        for index in range(count):
            rng = np.random.default_rng([seed, split_code, index])
            canvas, boxes, classes = _compose_scene(rng, objects, labels, canvas_range, object_size,
                                                    objects_per_image, max_overlap, background)
            file_name = f"{index:06d}.{image_format}"
            _save_image(canvas, build_dir / split / file_name, image_format)
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name,
                           "width": canvas.shape[1], "height": canvas.shape[0]})
            for box, label in zip(boxes, classes, strict=True):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        data = _coco_json(images, annotations, categories,
                          f"scenes of Fashion-MNIST {'train' if split == 'train' else 'test'} objects ({split})")
        _write_json(build_dir / "annotations" / f"instances_{split}.json", data)
        summary_splits[split] = _split_summary(build_dir, split, images, annotations)
    return {"dataset": "fashion_scenes", "source": str(root), "categories": categories, "splits": summary_splits}
