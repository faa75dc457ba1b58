"""Detection data: COCO JSON reading and its edge cases, box-consistent transforms, collation, and
the demo-data builders on the real data sets (when installed)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vit_detection import prepare
from vit_detection.config import DetectionConfig
from vit_detection.data import CocoDetection, collate_detection, load_coco_json, pad_divisor, read_rgb
from vit_detection.prepare import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    find_deepforest_data,
    prepare_fashion_scenes,
    prepare_tree_tiles,
)
from vit_detection.transforms import (
    build_detection_transforms,
    coco_to_normalized_cxcywh,
    resized_shape,
)
from vit_training.config import ConfigError, load_config
from vit_training.seeding import sample_seed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from detection_batch_shapes import coco_like_sizes  # noqa: E402


# ------------------------------------------------------------------------------------ helpers
def write_dataset(
    root: Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    pixels: dict[str, Image.Image] | None = None,
) -> tuple[Path, Path]:
    """Write a COCO JSON and (unless given) grey-noise RGB images of each listed size."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in images:
        picture = (pixels or {}).get(image["file_name"])
        if picture is None:
            array = rng.integers(0, 256, size=(image["height"], image["width"], 3), dtype=np.uint8)
            picture = Image.fromarray(array)
        picture.save(image_dir / image["file_name"])
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return image_dir, annotation_file


def image_entry(image_id: int, width: int = 40, height: int = 30) -> dict[str, Any]:
    return {"id": image_id, "file_name": f"{image_id:03d}.png", "width": width, "height": height}


def box(annotation_id: int, image_id: int, category_id: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


CATEGORIES_WITH_GAPS = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 17, "name": "cat"}]


# ------------------------------------------------------------------------------------ dataset
def test_category_ids_with_gaps_map_to_contiguous_labels_sorted_by_id(tmp_path: Path) -> None:
    images = [image_entry(5), image_entry(2)]
    annotations = [box(1, 5, 90, [1, 2, 10, 8]), box(2, 5, 1, [0, 0, 5, 5]), box(3, 2, 17, [3, 3, 4, 4])]
    ds = CocoDetection(*write_dataset(tmp_path, images, annotations, CATEGORIES_WITH_GAPS))
    assert ds.label_to_category_id == [1, 17, 90]
    assert ds.category_id_to_label == {1: 0, 17: 1, 90: 2}
    assert ds.class_names == ["person", "cat", "toothbrush"]
    assert ds.num_classes == 3
    assert ds.ids == [2, 5]  # sorted image ids
    _, target = ds[1]
    assert target["image_id"] == 5
    assert target["labels"].tolist() == [2, 0]
    assert target["labels"].dtype == torch.int64
    assert [ds.label_to_category_id[label] for label in target["labels"].tolist()] == [90, 1]


def test_target_boxes_are_normalised_cxcywh_of_the_image(tmp_path: Path) -> None:
    images = [image_entry(1, width=40, height=30)]
    ds = CocoDetection(*write_dataset(tmp_path, images, [box(1, 1, 1, [4, 6, 10, 12])], [{"id": 1, "name": "a"}]))
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    # cx = (4 + 10/2) / 40, cy = (6 + 12/2) / 30, w = 10 / 40, h = 12 / 30
    expected = torch.tensor([[9 / 40, 12 / 30, 10 / 40, 12 / 30]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["boxes"].dtype == torch.float32
    assert target["orig_size"].tolist() == [30, 40] and target["orig_size"].dtype == torch.int64
    assert target["size"].tolist() == [30, 40] and target["size"].dtype == torch.int64
    torch.testing.assert_close(coco_to_normalized_cxcywh(np.array([[0, 0, 40, 30]]), 30, 40),
                               torch.tensor([[0.5, 0.5, 1.0, 1.0]]))


def test_crowd_boxes_are_not_targets_but_stay_in_the_evaluation_ground_truth(tmp_path: Path) -> None:
    annotations = [box(1, 1, 1, [1, 1, 10, 10], iscrowd=1), box(2, 1, 1, [20, 5, 8, 8], iscrowd=0)]
    ds = CocoDetection(*write_dataset(tmp_path, [image_entry(1)], annotations, [{"id": 1, "name": "a"}]))
    _, target = ds[0]
    assert len(target["boxes"]) == 1
    torch.testing.assert_close(target["boxes"][0, 0], torch.tensor((20 + 4) / 40))
    assert ds.num_crowd == 1
    crowd = [a["iscrowd"] for a in ds.coco_gt.dataset["annotations"]]
    assert sorted(crowd) == [0, 1]


def test_degenerate_boxes_are_dropped_with_one_warning_counting_them(tmp_path: Path) -> None:
    annotations = [
        box(1, 1, 1, [5, 5, 0, 10]),  # zero width
        box(2, 1, 1, [5, 5, 10, -3]),  # negative height
        box(3, 1, 1, [float("nan"), 5, 10, 10]),  # non-finite
        box(4, 1, 1, [50, 5, 10, 10]),  # wholly right of the 40 px wide image
        box(5, 1, 1, [35, 25, 10, 10]),  # partly outside: clipped to (35, 25, 5, 5), kept
        box(6, 1, 1, [2, 2, 4, 4]),  # fine
    ]
    paths = write_dataset(tmp_path, [image_entry(1)], annotations, [{"id": 1, "name": "a"}])
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(*paths)
    assert len(record) == 1
    assert "dropped 4 of 6 annotations" in str(record[0].message)
    assert ds.num_degenerate == 4
    _, target = ds[0]
    torch.testing.assert_close(target["boxes"][0], torch.tensor([37.5 / 40, 27.5 / 30, 5 / 40, 5 / 30]))
    assert len(target["boxes"]) == 2
    assert sorted(a["id"] for a in ds.coco_gt.dataset["annotations"]) == [5, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warnings per item
        ds[0]


def test_images_without_annotations_are_kept_with_empty_targets(tmp_path: Path) -> None:
    images = [image_entry(1), image_entry(2)]
    ds = CocoDetection(*write_dataset(tmp_path, images, [box(1, 1, 1, [1, 1, 5, 5])], [{"id": 1, "name": "a"}]))
    assert len(ds) == 2
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    transform = build_detection_transforms(True, train_sizes=[24, 32], eval_size=32, max_size=64, crop_prob=1.0)
    ds.transform = transform
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_annotation_id_zero_is_renumbered_in_the_evaluation_ground_truth(tmp_path: Path) -> None:
    annotations = [box(0, 1, 1, [1, 1, 5, 5]), box(1, 1, 1, [10, 10, 5, 5]), box(2, 1, 1, [20, 10, 5, 5])]
    ds = CocoDetection(*write_dataset(tmp_path, [image_entry(1)], annotations, [{"id": 1, "name": "a"}]))
    ids = [a["id"] for a in ds.coco_gt.dataset["annotations"]]
    assert min(ids) >= 1 and len(set(ids)) == 3
    for annotation in ds.coco_gt.dataset["annotations"]:
        assert annotation["iscrowd"] == 0 and annotation["area"] == 25.0


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_images_of_any_pil_mode_load_as_rgb(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(12, 16), dtype=np.uint8)
    if mode == "I;16":
        picture = Image.fromarray(grey.astype(np.uint16) * 200 + 1000)  # uint16 -> I;16
        suffix = ".png"
    elif mode == "CMYK":
        picture = Image.fromarray(np.stack([grey] * 3, axis=2)).convert("CMYK")
        suffix = ".jpg"
    else:
        picture = Image.fromarray(np.stack([grey] * 3, axis=2)).convert(mode)
        suffix = ".png"
    assert picture.mode == mode
    path = tmp_path / f"image{suffix}"
    picture.save(path)
    rgb = read_rgb(path)
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.uint8
    if mode in ("L", "LA", "RGBA"):
        np.testing.assert_array_equal(rgb[..., 0], grey)
        np.testing.assert_array_equal(rgb[..., 1], grey)
    if mode == "I;16":
        # rescaled min..max -> 0..255: the darkest pixel is 0, the brightest 255, order kept
        assert rgb.min() == 0 and rgb.max() == 255
        assert np.array_equal(np.argsort(rgb[..., 0], axis=None, kind="stable"),
                              np.argsort(grey, axis=None, kind="stable"))
    images = [{"id": 1, "file_name": path.name, "width": 16, "height": 12}]
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    image, _ = CocoDetection(tmp_path, annotation_file)[0]
    assert image.shape == (3, 12, 16)


def test_a_missing_image_file_is_named_in_the_error(tmp_path: Path) -> None:
    image_dir, annotation_file = write_dataset(tmp_path, [image_entry(1), image_entry(2)], [],
                                               [{"id": 1, "name": "a"}])
    (image_dir / "002.png").unlink()
    ds = CocoDetection(image_dir, annotation_file)
    ds[0]
    with pytest.raises(FileNotFoundError, match=r"002\.png: image file not found \(image id 2"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoDetection(tmp_path / "nowhere", annotation_file)
    with pytest.raises(FileNotFoundError, match=r"missing\.json: annotation file not found"):
        CocoDetection(image_dir, tmp_path / "missing.json")


def test_an_image_whose_size_disagrees_with_the_json_is_an_error(tmp_path: Path) -> None:
    image_dir, annotation_file = write_dataset(tmp_path, [image_entry(1, width=40, height=30)], [],
                                               [{"id": 1, "name": "a"}])
    Image.new("RGB", (41, 30)).save(image_dir / "001.png")
    with pytest.raises(ValueError, match=r"001\.png: image is 30x41 \(h x w\) but .* says 30x40"):
        CocoDetection(image_dir, annotation_file)[0]


GOOD = {"images": [image_entry(1)], "annotations": [box(1, 1, 1, [1, 1, 5, 5])], "categories": [{"id": 1, "name": "a"}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("annotations"), "missing field 'annotations'"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] has no field 'file_name'"),
        (lambda d: d["images"][0].update(width="40"), r"images\[0\]\.width must be int"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\]\.bbox must be 4 numbers"),
        (lambda d: d["annotations"][0].pop("category_id"), r"annotations\[0\] has no field 'category_id'"),
        (lambda d: d["annotations"][0].update(category_id=7), r"annotations\[0\]\.category_id=7 is not a category id"),
        (lambda d: d["annotations"][0].update(image_id=9), r"annotations\[0\]\.image_id=9 is not an image id"),
        (lambda d: d["categories"].append({"id": 1, "name": "b"}), r"categories\[1\]\.id=1 is used by another"),
        (lambda d: d["categories"][0].pop("name"), r"categories\[0\] has no field 'name'"),
    ],
)
def test_malformed_json_fields_give_one_line_errors_naming_file_and_field(tmp_path: Path, change, message) -> None:
    data = json.loads(json.dumps(GOOD))
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        load_coco_json(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_invalid_json_text_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON") as info:
        load_coco_json(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ transforms
def test_resized_shape_follows_detr_short_side_and_max_size() -> None:
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(640, 480, 800, 1333) == (1067, 800)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)  # the long side caps the scale
    assert resized_shape(100, 1000, 800, None) == (800, 8000)
    transform = build_detection_transforms(False, train_sizes=[64], eval_size=64, max_size=100)
    image, _, _ = transform(np.zeros((50, 120, 3), np.uint8), np.zeros((0, 4)), np.zeros(0, np.int64))
    assert tuple(image.shape[1:]) == resized_shape(50, 120, 64, 100) == (42, 100)


def test_horizontal_flip_maps_a_known_box_exactly() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    transform = build_detection_transforms(True, train_sizes=[30], eval_size=30, max_size=None, hflip=1.0,
                                           crop_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    out, boxes, labels = transform(image, np.array([[4, 6, 10, 12]], np.float32), np.array([3]))
    # x -> W - x - w = 40 - 4 - 10 = 26; cx = (26 + 5) / 40
    torch.testing.assert_close(boxes, torch.tensor([[31 / 40, 12 / 30, 10 / 40, 12 / 30]]), atol=1e-6, rtol=0)
    assert labels.tolist() == [3] and labels.dtype == torch.int64
    torch.testing.assert_close(out, torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1).float() / 255)


def test_eval_resize_keeps_normalised_boxes() -> None:
    transform = build_detection_transforms(False, train_sizes=[60], eval_size=60, max_size=200)
    image = np.zeros((30, 40, 3), np.uint8)
    out, boxes, _ = transform(image, np.array([[4, 6, 10, 12]], np.float32), np.array([0]))
    assert tuple(out.shape) == (3, 60, 80)
    torch.testing.assert_close(boxes, torch.tensor([[9 / 40, 12 / 30, 10 / 40, 12 / 30]]), atol=1e-6, rtol=0)


def painted_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A black 90 x 120 image with 4 solid boxes, box k painted colour k (so pixels identify boxes)."""
    image = np.zeros((90, 120, 3), np.uint8)
    boxes = np.array([[5, 5, 30, 20], [60, 10, 40, 30], [10, 50, 25, 35], [70, 55, 45, 30]], np.float32)
    for k, (x, y, w, h) in enumerate(boxes.astype(int)):
        image[y:y + h, x:x + w] = (60 * (k + 1), 255 - 50 * k, 40 * k)
    return image, boxes, np.arange(4, dtype=np.int64)


def test_training_augmentation_keeps_boxes_on_their_pixels() -> None:
    image, boxes, labels = painted_scene()
    colours = np.array([image[int(y) + 1, int(x) + 1] for x, y, _, _ in boxes], np.float32) / 255
    transform = build_detection_transforms(True, train_sizes=[60, 80, 100], eval_size=80, max_size=160,
                                           hflip=0.5, vflip=0.5, crop_prob=1.0, crop_min_scale=0.3,
                                           mean=(0, 0, 0), std=(1, 1, 1))
    sizes = set()
    for seed in range(25):
        transform.set_seed(seed)
        out, out_boxes, out_labels = transform(image, boxes, labels)
        height, width = out.shape[1:]
        # short side from the list, unless the long side hit max_size (elongated crops)
        assert min(height, width) in (60, 80, 100) or max(height, width) == 160
        sizes.add(min(height, width))
        assert len(out_labels) >= 1  # the crop keeps at least one box whole
        assert bool(((out_boxes > 0) & (out_boxes <= 1)).all())
        for (cx, cy, w, h), label in zip(out_boxes.tolist(), out_labels.tolist(), strict=True):
            if w * width < 4 or h * height < 4:
                continue  # a sliver a crop left: even its centre pixel lies within the blur of an edge
            centre = out[:, int(cy * height), int(cx * width)].numpy()
            np.testing.assert_allclose(centre, colours[label], atol=0.02)
            # The box's corners sit where its colour starts and ends, within the resize's blur: a
            # crop of 27 px (0.3 x 90) resized to 100 blurs edges over 100 / 27 / 2 = 1.85 px, so
            # pixels whose centres lie 2+ px inside (outside) the box must (must not) be its colour.
            x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
            y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
            if x1 - x0 < 6 or y1 - y0 < 6:
                continue  # too thin for pixels 2 px inside both edges
            for x, y in ((x0 + 2.5, y0 + 2.5), (x1 - 2.5, y1 - 2.5)):
                np.testing.assert_allclose(out[:, int(y), int(x)].numpy(), colours[label], atol=0.25)
            # just outside the left edge is something else (black, or another box's colour)
            if x0 >= 3:
                assert np.abs(out[:, int(cy * height), int(x0 - 2.5)].numpy() - colours[label]).max() > 0.1
    assert len(sizes & {60, 80, 100}) > 1  # scale jitter draws from the list


def test_per_sample_seeding_repeats_any_order_and_changes_with_the_epoch(tmp_path: Path) -> None:
    images = [image_entry(i, width=64, height=48) for i in (1, 2, 3, 4)]
    annotations = [box(i, i, 1, [8, 8, 30, 20]) for i in (1, 2, 3, 4)]
    paths = write_dataset(tmp_path, images, annotations, [{"id": 1, "name": "a"}])

    def make() -> CocoDetection:
        transform = build_detection_transforms(True, train_sizes=[32, 40, 48, 56], eval_size=48, max_size=96,
                                               crop_prob=0.5, crop_min_scale=0.5)
        return CocoDetection(*paths, transform=transform, seed=7)

    first = make()
    reference = [first[i] for i in range(4)]
    second = make()
    for i in (3, 1, 0, 2):  # another order, another object: the same samples
        image, target = second[i]
        torch.testing.assert_close(image, reference[i][0])
        torch.testing.assert_close(target["boxes"], reference[i][1]["boxes"])
    second.set_epoch(1)
    changed = [not torch.equal(second[i][1]["boxes"], reference[i][1]["boxes"])
               or second[i][0].shape != reference[i][0].shape for i in range(4)]
    assert any(changed)
    assert sample_seed(7, 0, 1) != sample_seed(7, 1, 0)


# ------------------------------------------------------------------------------------ collate
def test_collate_pads_bottom_right_to_a_multiple_and_masks_the_padding() -> None:
    a = torch.rand(3, 5, 7)
    b = torch.rand(3, 9, 4)
    targets = [{"image_id": 1}, {"image_id": 2}]
    images, mask, out_targets = collate_detection([(a, targets[0]), (b, targets[1])], size_divisor=4)
    assert images.shape == (2, 3, 12, 8) and mask.shape == (2, 12, 8) and mask.dtype == torch.bool
    torch.testing.assert_close(images[0, :, :5, :7], a)
    torch.testing.assert_close(images[1, :, :9, :4], b)
    assert float(images[0, :, 5:].abs().sum()) == 0 and float(images[0, :, :, 7:].abs().sum()) == 0
    assert float(images[1, :, 9:].abs().sum()) == 0 and float(images[1, :, :, 4:].abs().sum()) == 0
    assert not mask[0, :5, :7].any() and mask[0, 5:].all() and mask[0, :, 7:].all()
    assert not mask[1, :9, :4].any() and mask[1, 9:].all() and mask[1, :, 4:].all()
    assert int((~mask).sum()) == 5 * 7 + 9 * 4
    # the targets gain their unpadded size as host ints (the inputs are not modified)
    assert out_targets == [{"image_id": 1, "image_hw": (5, 7)}, {"image_id": 2, "image_hw": (9, 4)}]
    assert targets == [{"image_id": 1}, {"image_id": 2}]
    images, mask, _ = collate_detection([(a, targets[0])], size_divisor=1)
    assert images.shape == (1, 3, 5, 7) and not mask.any()
    with pytest.raises(ValueError, match="size_divisor"):
        collate_detection([(a, targets[0])], size_divisor=0)


def coco_like_batch_shapes(config: DetectionConfig, images: int, batch_size: int, seed: int = 0) -> set[tuple[int, int]]:
    """The padded (H, W) of every batch of an epoch of COCO-like image sizes, through the real collate.

    Sizes from benchmarks/detection_batch_shapes.py (`coco_like_sizes`: COCO's usual originals and
    random aspect ratios, the config's random crop, DETR's resize). Items are 1-channel uint8 tensors
    of those sizes: the collate pads by shape, the pixel values do not matter here.
    """
    divisor = pad_divisor(config.model.backbone.resolved_patch_size, config.data.pad_size_multiple)
    sizes = coco_like_sizes(config, images // batch_size * batch_size, np.random.default_rng(seed))
    shapes = set()
    for start in range(0, len(sizes), batch_size):
        items = [(torch.empty((1, h, w), dtype=torch.uint8), {}) for h, w in sizes[start:start + batch_size]]
        batch, mask, _ = collate_detection(items, size_divisor=divisor)
        assert batch.shape[-2:] == mask.shape[-2:]
        shapes.add(tuple(batch.shape[-2:]))
    return shapes


def test_pad_size_multiple_keeps_coco_batch_shapes_few() -> None:
    """DETR's multi-scale sizes give nearly every batch a new shape; padding to a multiple bounds them."""
    config = load_config(DetectionConfig, ROOT / "configs/detection/coco_vit_b16.yaml")
    assert config.data.pad_size_multiple == 128
    plain = load_config(DetectionConfig, ROOT / "configs/detection/coco_vit_b16.yaml", ["data.pad_size_multiple=null"])
    coarse = load_config(DetectionConfig, ROOT / "configs/detection/coco_vit_b16.yaml", ["data.pad_size_multiple=256"])
    for batch_size in (2, 8):
        unpadded = coco_like_batch_shapes(plain, 800, batch_size)
        padded = coco_like_batch_shapes(config, 800, batch_size)
        fewest = coco_like_batch_shapes(coarse, 800, batch_size)
        # Short sides 480..800 and long sides up to 1333 fall on 8 multiples of 128 each (512..1408).
        assert all(h % 128 == 0 and w % 128 == 0 and 512 <= min(h, w) and max(h, w) <= 1408 for h, w in padded)
        assert len(padded) <= 64 and len(unpadded) >= 3 * len(padded), (len(unpadded), len(padded))
        assert len(fewest) <= 25 and len(fewest) < len(padded), (len(fewest), len(padded))
        assert all(h % 256 == 0 and w % 256 == 0 for h, w in fewest)
    assert len(coco_like_batch_shapes(plain, 800, 2)) > 150


def test_pad_divisor_and_pad_size_multiple_validation() -> None:
    assert pad_divisor(16) == 16 and pad_divisor(16, None) == 16
    assert pad_divisor(16, 128) == 128 and pad_divisor(8, 20) == 40 and pad_divisor(16, 1) == 16
    with pytest.raises(ValueError, match="pad_size_multiple"):
        pad_divisor(16, 0)
    for bad in ("0", "-32"):
        with pytest.raises(ConfigError, match=r"data.pad_size_multiple=-?\d+ must be a positive number of pixels"):
            load_config(DetectionConfig, None, [f"data.pad_size_multiple={bad}"])
    with pytest.raises(ConfigError, match="pad_size_multiple"):
        load_config(DetectionConfig, None, ["data.pad_size_multiple=1.5"])
    assert load_config(DetectionConfig, None).data.pad_size_multiple is None
    assert load_config(DetectionConfig, ROOT / "configs/detection/coco_folder.yaml").data.pad_size_multiple is None


# ------------------------------------------------------------------------------------ prepare
HAS_FASHION = (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
HAS_DEEPFOREST = importlib.util.find_spec("deepforest") is not None


@pytest.mark.skipif(not HAS_FASHION, reason=f"Fashion-MNIST IDX files not in {DEBIAN_FASHION_MNIST_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_scenes_have_exact_boxes_and_read_back(tmp_path: Path) -> None:
    # One object per scene on a plain background, lossless: the drawn pixels must fill the box exactly.
    summary = prepare_fashion_scenes(tmp_path / "single", num_train=12, num_val=4, objects_per_image=(1, 1),
                                     background="plain", image_format="png", seed=3)
    assert summary["splits"]["train"]["images"] == 12 and summary["splits"]["val"]["images"] == 4
    assert [c["id"] for c in summary["categories"]] == list(range(1, 11))
    assert [c["name"] for c in summary["categories"]] == list(FASHION_MNIST_CLASSES)
    root = tmp_path / "single"
    data = load_coco_json(root / "annotations/instances_train.json")
    for image in data["images"]:
        pixels = np.asarray(Image.open(root / "train" / image["file_name"]).convert("RGB")).astype(int)
        assert 64 <= image["height"] <= 96 and 64 <= image["width"] <= 96
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        background = colours[counts.argmax()]  # the plain background covers most of the canvas
        drawn = np.argwhere((pixels != background).any(axis=2))
        (annotation,) = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        y0, x0 = drawn.min(axis=0)
        y1, x1 = drawn.max(axis=0) + 1
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert 16 <= max(x1 - x0, y1 - y0) <= 36 and annotation["area"] == (x1 - x0) * (y1 - y0)

    # The default kind: several objects, noise, JPEG; deterministic, re-runnable, read back.
    first = prepare_fashion_scenes(tmp_path / "a", num_train=30, num_val=10, seed=1)
    second = prepare_fashion_scenes(tmp_path / "b", num_train=30, num_val=10, seed=1)
    for split in ("train", "val"):
        a = (tmp_path / "a/annotations" / f"instances_{split}.json").read_text()
        assert a == (tmp_path / "b/annotations" / f"instances_{split}.json").read_text()
    assert (tmp_path / "a/train/000007.jpg").read_bytes() == (tmp_path / "b/train/000007.jpg").read_bytes()
    assert prepare_fashion_scenes(tmp_path / "a", num_train=30, num_val=10, seed=1) == first
    with pytest.raises(FileExistsError, match="other parameters"):
        prepare_fashion_scenes(tmp_path / "a", num_train=31, num_val=10, seed=1)
    assert second["splits"]["train"]["boxes"] >= 2 * 30 * 0.9
    train = CocoDetection(first["splits"]["train"]["image_dir"], first["splits"]["train"]["annotation_file"])
    assert len(train) == 30 and train.num_classes == 10 and train.num_degenerate == 0
    counts = [len(train[i][1]["labels"]) for i in range(len(train))]
    assert min(counts) >= 1 and max(counts) <= 4 and max(counts) >= 3
    ids = [a["id"] for a in train.coco_gt.dataset["annotations"]]
    assert min(ids) == 1


@pytest.mark.skipif(not HAS_FASHION, reason=f"Fashion-MNIST IDX files not in {DEBIAN_FASHION_MNIST_DIR}")
def test_an_interrupted_prepare_leaves_nothing_and_can_run_again(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = prepare._save_image

    def failing(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        original(*args, **kwargs)

    monkeypatch.setattr(prepare, "_save_image", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_fashion_scenes(tmp_path / "scenes", num_train=8, num_val=2)
    assert not (tmp_path / "scenes").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(prepare, "_save_image", original)
    summary = prepare_fashion_scenes(tmp_path / "scenes", num_train=8, num_val=2)
    assert summary["splits"]["train"]["images"] == 8 and (tmp_path / "scenes/summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes"]


def test_missing_fashion_files_name_the_folder_and_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        prepare_fashion_scenes(tmp_path / "out", num_train=2, num_val=1, fashion_mnist_dir=tmp_path)


@pytest.mark.skipif(not HAS_DEEPFOREST, reason="deepforest not installed (pip install --no-deps deepforest==2.1.0)")
def test_tree_tiles_from_the_real_deepforest_images(tmp_path: Path) -> None:
    summary = prepare_tree_tiles(tmp_path / "trees")
    sources = {s["file"]: s for s in summary["sources"]}
    assert len(sources) == 4 and sum(s["boxes"] for s in sources.values()) == 951
    assert max(max(s["height"], s["width"]) for s in sources.values()) == 2472
    train, val = summary["splits"]["train"], summary["splits"]["val"]
    assert train["images"] + val["images"] == 56  # 6x7 + 4x3 + 1 + 1 tiles, none empty-dropped
    assert val["images"] == 8 + 2  # 20% of each multi-tile image
    assert 940 <= train["boxes"] + val["boxes"] <= 951  # boxes cut by tile borders below 50% are dropped
    for split in (train, val):
        ds = CocoDetection(split["image_dir"], split["annotation_file"])
        assert ds.class_names == ["tree"] and ds.label_to_category_id == [1] and ds.num_degenerate == 0
        annotations = ds.coco_gt.dataset["annotations"]
        assert min(a["id"] for a in annotations) == 1
        for index in range(len(ds)):
            info = ds.image_info(index)
            assert info["width"] <= 400 and info["height"] <= 400
        image, target = ds[0]
        assert image.shape[0] == 3 and bool(((target["boxes"] > 0) & (target["boxes"] <= 1)).all())
    # the source boxes come back at their tile offsets
    data = json.loads(Path(train["annotation_file"]).read_text())
    soap = [im for im in data["images"] + json.loads(Path(val["annotation_file"]).read_text())["images"]
            if im["source_file"] == "SOAP_061.png"]
    assert len(soap) == 1 and soap[0]["tile_origin"] == [0, 0]
    assert prepare_tree_tiles(tmp_path / "trees") == summary  # re-run: the stored data set


def test_tree_tiles_without_deepforest_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps deepforest==2\.1\.0"):
        find_deepforest_data(tmp_path)


def test_voc_reader_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text("<annotation><filename>a.png</filename><size><width>10</width><height>8</height></size>"
                    "<object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>5</xmax></bndbox>"
                    "</object></annotation>")
    with pytest.raises(ValueError, match=r"a\.xml: <object> 0 <bndbox> has no <ymax>"):
        prepare.read_voc_boxes(path)
    path.write_text(path.read_text().replace("</xmax>", "</xmax><ymax>7.5</ymax>"))
    filename, shape, boxes, names = prepare.read_voc_boxes(path)
    assert (filename, shape, names) == ("a.png", (8, 10), ["Tree"])
    assert boxes.tolist() == [[1, 2, 5, 7.5]] and not math.isnan(float(boxes.sum()))
