"""Data-loader throughput per CPU core of each task's GPU training pipeline, and the cores it needs.

A GPU step is only as fast as the DataLoader workers that feed it. This measures, in ONE process on
one core (``torch.set_num_threads(1)``, ``num_workers=0``, which is what one DataLoader worker
process does), the images per second of each task's real training pipeline — the task's own
dataset class, transform and collate function, built from its GPU config — on generated files of
realistic size:

  * classification: ImageFolder JPEGs of about 500 x 375 (ImageNet's typical size, quality 90),
    `configs/classification/imagenet_vit_b16_finetune.yaml` (random resized crop to 224, flip,
    2 photometric ops, normalise), batches of 128; measured twice in the same run, the reference
    path (full-size decode, albumentations' crop) and the draft path (`data.fast_decode`: the crop
    box sampled from the file's header, JPEG DCT-domain downscaling when the crop allows, crop
    before any pixel op; see `vit_classification.transforms.DraftCropTransform`);
  * detection: COCO-style JPEGs (640 x 480-like sizes) with `configs/detection/coco_vit_b16.yaml`
    (DETR's multi-scale resize to a short side of 480..800, max 1333, random crop, flip),
    batches of 2 padded by `collate_detection`;
  * segmentation: TransUNet-style Synapse ``.npz`` slices (512 x 512 float32 image + label) with
    `configs/segmentation/synapse_r50_vit_b16.yaml` (rotations/flips, resize to 224), batches of 24.

For each: the median images/s over ``--repeats`` passes of ``--images`` images, and the CPU cores
needed to feed a GPU at ``--gpu-images-per-s`` (ideal linear scaling over worker processes; real
machines lose some to hyper-threads and the main process). The GPU figures are the issue's
4,000 images/s for ViT-B/16 classification at 224 on one modern GPU; for DETR ViT-B/16 at COCO sizes
60 images/s (about 0.3 s per 16-image step on 8 A100-class GPUs in the DETR paper's setting, scaled
to one faster GPU) and for TransUNet at 224 800 images/s are assumed values, to be replaced by the
GPU suite's measurements.

    python benchmarks/loader_throughput.py                       # all three, ~2 minutes
    python benchmarks/loader_throughput.py --only classification --images 400 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from vit_training import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GPU_IMAGES_PER_S = {"classification": 4000.0, "detection": 60.0, "segmentation": 800.0}
TASKS = ("classification", "detection", "segmentation")


# ------------------------------------------------------------------------------------ generated files
def natural_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 (height, width, 3) picture with smooth regions, edges and sensor-like noise.

    Pure noise would compress to 3-4x the size of a photo (and decode slower); this lands near a
    photo's ~90 kB per 500 x 375 JPEG at quality 90.
    """
    small = rng.uniform(0, 255, (max(2, height // 48), max(2, width // 48), 3)).astype(np.float32)
    image = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((width, height), Image.BICUBIC), np.float32)
    for _ in range(4):  # a few hard-edged shapes
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        image[y0:y0 + int(rng.integers(10, height // 2)), x0:x0 + int(rng.integers(10, width // 2))] = rng.uniform(0, 255, 3)
    image += rng.normal(0.0, 10.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_imagefolder(root: Path, count: int, rng: np.random.Generator, classes: int = 10,
                     size: tuple[int, int] = (500, 375)) -> int:
    """``root/train/<class>/*.JPEG``: `count` JPEGs of about `size` (w, h), 3/4 landscape, 1/4 portrait.
    Returns bytes written."""
    written = 0
    for i in range(count):
        width, height = size if rng.random() < 0.75 else size[::-1]
        width, height = width + int(rng.integers(-width // 12, width // 12 + 1)), height + int(rng.integers(-height // 12, height // 12 + 1))
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = jpeg_bytes(natural_image(rng, height, width))
        (folder / f"img_{i:06d}.JPEG").write_bytes(data)
        written += len(data)
    return written


def make_coco(root: Path, count: int, rng: np.random.Generator) -> int:
    """``root/train2017`` + ``root/annotations/instances_train2017.json`` with COCO's typical sizes."""
    (root / "train2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations, written = [], [], 0
    for i in range(count):
        width, height = [(640, 480), (480, 640), (640, 427), (640, 426), (500, 375), (640, 360)][i % 6]
        data = jpeg_bytes(natural_image(rng, height, width))
        name = f"{i:012d}.jpg"
        (root / "train2017" / name).write_bytes(data)
        written += len(data)
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for _ in range(int(rng.integers(1, 8))):  # COCO averages ~7 objects per image
            w, h = float(rng.uniform(20, width / 2)), float(rng.uniform(20, height / 2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 4)),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": k, "name": f"class{k}"} for k in (1, 2, 3)]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return written


def make_synapse(root: Path, count: int, rng: np.random.Generator) -> int:
    """``root/train_npz/*.npz`` (TransUNet's layout: image float32 (512, 512) in [0, 1], label) + list."""
    (root / "train_npz").mkdir(parents=True, exist_ok=True)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    names, written = [], 0
    for i in range(count):
        image = natural_image(rng, 512, 512)[..., 0].astype(np.float32) / 255.0
        label = np.zeros((512, 512), np.float32)
        for k in range(1, 9):
            y, x = int(rng.integers(0, 480)), int(rng.integers(0, 480))
            label[y:y + int(rng.integers(8, 64)), x:x + int(rng.integers(8, 64))] = k
        name = f"case{i // 100:04d}_slice{i % 100:03d}"
        path = root / "train_npz" / f"{name}.npz"
        np.savez(path, image=image, label=label)  # TransUNet's files are uncompressed
        written += path.stat().st_size
        names.append(name)
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    return written


# ------------------------------------------------------------------------------------ pipelines
def classification_dataset(root: Path, fast_decode: bool | None) -> tuple[Dataset, Callable | None, int]:
    from vit_classification.config import ClassificationConfig
    from vit_classification.task import ClassificationTask

    overrides = [f"data.root={root}", "model.backbone.pretrained=null", f"train.output_dir={root / 'run'}"]
    if fast_decode is not None:
        overrides.append(f"data.fast_decode={'true' if fast_decode else 'false'}")
    config = load_config(ClassificationConfig, ROOT / "configs/classification/imagenet_vit_b16_finetune.yaml", overrides)
    task = ClassificationTask(config)
    return task.build_train_dataset(), task.collate_fn(True), int(config.train.batch_size)


def detection_dataset(root: Path) -> tuple[Dataset, Callable | None, int]:
    from vit_detection.config import DetectionConfig
    from vit_detection.task import DetectionTask

    overrides = [f"data.root={root}", "data.val_images=null", "data.val_annotations=null",
                 "model.backbone.pretrained=null", f"train.output_dir={root / 'run'}"]
    config = load_config(DetectionConfig, ROOT / "configs/detection/coco_vit_b16.yaml", overrides)
    task = DetectionTask(config)
    return task.build_train_dataset(), task.collate_fn(True), int(config.train.batch_size)


def segmentation_dataset(root: Path) -> tuple[Dataset, Callable | None, int]:
    from vit_segmentation.config import SegmentationConfig
    from vit_segmentation.task import SegmentationTask

    overrides = [f"data.root={root}", "model.backbone.pretrained=null", f"train.output_dir={root / 'run'}"]
    config = load_config(SegmentationConfig, ROOT / "configs/segmentation/synapse_r50_vit_b16.yaml", overrides)
    task = SegmentationTask(config)
    return task.build_train_dataset(), task.collate_fn(True), int(config.train.batch_size)


def images_per_second(cases: list[tuple[Dataset, Callable | None, int]], images: int, repeats: int) -> list[list[float]]:
    """images/s of `repeats` passes over the first `images` items of each case, batched and collated
    in this process; the cases take turns within each repeat, so a busy machine slows them alike."""
    loaders = []
    for dataset, collate, batch_size in cases:
        subset = torch.utils.data.Subset(dataset, list(range(min(images, len(dataset)))))
        loaders.append((dataset, len(subset), DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0,
                                                          collate_fn=collate)))
    rates: list[list[float]] = [[] for _ in cases]
    for epoch in range(repeats + 1):  # the first pass warms the page cache and the imports
        for k, (dataset, count, loader) in enumerate(loaders):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            start = time.perf_counter()
            for _ in loader:
                pass
            if epoch:
                rates[k].append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=TASKS, action="append", help="measure only these tasks (repeatable)")
    parser.add_argument("--images", type=int, default=256, help="images per pass (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported (default 3)")
    parser.add_argument("--gpu-images-per-s", type=float, nargs="*", default=None, metavar="TASK=RATE",
                        help="GPU throughput to feed, e.g. classification=4000 detection=60 segmentation=800")
    parser.add_argument("--large-photos", action="store_true",
                        help="also classification on 1600 x 1200 JPEGs (camera photos), where JPEG reduction applies")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the generated files here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gpu_rates = dict(DEFAULT_GPU_IMAGES_PER_S)
    for item in args.gpu_images_per_s or []:
        name, _, value = item.partition("=")
        if name not in gpu_rates:
            parser.error(f"--gpu-images-per-s {item!r}: the task must be one of {', '.join(TASKS)}")
        gpu_rates[name] = float(value)
    tasks = args.only or list(TASKS)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.data_dir or Path(tmp)
        for task in tasks:
            root = base / task
            if task == "classification":
                size = make_imagefolder(root, args.images, rng) if not root.exists() else 0
                cases = [("reference", lambda root=root: classification_dataset(root, False)),
                         ("fast_decode", lambda root=root: classification_dataset(root, True))]
                if args.large_photos:
                    large = base / "classification_large"
                    if not large.exists():
                        make_imagefolder(large, args.images // 4, rng, size=(1600, 1200))
                    cases += [("reference, 1600x1200", lambda large=large: classification_dataset(large, False)),
                              ("fast_decode, 1600x1200", lambda large=large: classification_dataset(large, True))]
            elif task == "detection":
                size = make_coco(root, args.images, rng) if not root.exists() else 0
                cases = [("DETR multi-scale", lambda root=root: detection_dataset(root))]
            else:
                size = make_synapse(root, args.images, rng) if not root.exists() else 0
                cases = [("Synapse slices", lambda root=root: segmentation_dataset(root))]
            built = [build() for _, build in cases]
            for (name, _), rates in zip(cases, images_per_second(built, args.images, args.repeats), strict=True):
                median = statistics.median(rates)
                rows.append({"task": task, "pipeline": name, "images": args.images, "batch": built[0][2],
                             "mean_file_kB": size / args.images / 1e3 if size else None,
                             "images_per_s_per_core": median, "min": min(rates), "max": max(rates),
                             "gpu_images_per_s": gpu_rates[task],
                             "cores_needed": math.ceil(gpu_rates[task] / median)})
    print(f"{'task':<15} {'pipeline':<24} {'images/s/core':>14} {'(min-max)':>14} {'GPU img/s':>10} {'cores':>6}")
    for row in rows:
        spread = f"{row['min']:.0f}-{row['max']:.0f}"
        print(f"{row['task']:<15} {row['pipeline']:<24} {row['images_per_s_per_core']:>14.1f} {spread:>14} "
              f"{row['gpu_images_per_s']:>10.0f} {row['cores_needed']:>6}")
    for row in rows:
        print(f"{row['task']} ({row['pipeline']}): {row['cores_needed']} cores needed to feed "
              f"{row['gpu_images_per_s']:.0f} images/s")
    rate = {row["pipeline"]: row["images_per_s_per_core"] for row in rows if row["task"] == "classification"}
    for suffix in ("", ", 1600x1200"):
        if f"reference{suffix}" in rate:
            print(f"classification{suffix}: fast_decode / reference = "
                  f"{rate[f'fast_decode{suffix}'] / rate[f'reference{suffix}']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
