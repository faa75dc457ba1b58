"""Detection batch shapes and padding cost at COCO-like image sizes, per `data.pad_size_multiple`.

DETR's training resize draws a short side per image (480..800) and caps the long side (1333), so
nearly every padded batch has a new (H, W). `data.pad_size_multiple` rounds the padded sides up to a
multiple, which bounds the shapes (what compiled graphs and per-shape kernel plans see) at the cost of
padded pixels the model still computes. This prints both for each multiple and batch size:

  * shapes: distinct padded (H, W) in an epoch of `--images` images;
  * padded / real pixels: the batch's H x W x B over the pixels of its unpadded images
    (1.0 = no padding; compute grows with it);
  * the same with batches grouped by orientation (portrait and landscape images batched apart, as
    torchvision's detection references do with `GroupedBatchSampler`), which the project does not
    do yet: it shows what such a sampler would save.

Sizes come from `coco_like_sizes`: originals of COCO's usual sizes (640 x 480, 480 x 640, 640 x 427,
640 x 360) and random aspect ratios in [1/2, 2], the config's random crop, then DETR's resize
(`resized_shape`). No images are read; the padded sides are computed as `collate_detection` does.

    python benchmarks/detection_batch_shapes.py --config configs/detection/coco_vit_b16.yaml
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import numpy as np

from vit_detection.config import DetectionConfig
from vit_detection.data import pad_divisor
from vit_detection.transforms import resized_shape
from vit_training.config import load_config

COCO_USUAL_SIZES = ((640, 480), (480, 640), (640, 427), (640, 360))  # (width, height)


def coco_like_sizes(config: DetectionConfig, images: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(h, w) after the training crop and resize of `images` COCO-like originals (80% usual sizes)."""
    data = config.data
    sizes = []
    for _ in range(images):
        if rng.random() < 0.8:
            width, height = COCO_USUAL_SIZES[int(rng.integers(len(COCO_USUAL_SIZES)))]
        else:
            aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height
            width, height = (640, round(640 / aspect)) if aspect >= 1 else (round(640 * aspect), 640)
        if rng.random() < data.crop_prob:
            height = int(rng.integers(math.ceil(data.crop_min_scale * height), height + 1))
            width = int(rng.integers(math.ceil(data.crop_min_scale * width), width + 1))
        sizes.append(resized_shape(height, width, int(rng.choice(data.train_sizes)), data.max_size))
    return sizes


def padded_shape(sizes: Sequence[tuple[int, int]], divisor: int) -> tuple[int, int]:
    """The (H, W) `collate_detection` pads a batch of these (h, w) to."""
    height = -(-max(h for h, _ in sizes) // divisor) * divisor
    width = -(-max(w for _, w in sizes) // divisor) * divisor
    return height, width


def batches(sizes: list[tuple[int, int]], batch_size: int, grouped: bool) -> list[list[tuple[int, int]]]:
    """Consecutive batches, or (grouped) batches filled per orientation in arrival order; the last partial dropped."""
    if not grouped:
        return [sizes[i:i + batch_size] for i in range(0, len(sizes) - batch_size + 1, batch_size)]
    pending: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    out = []
    for size in sizes:
        group = pending[size[0] > size[1]]
        group.append(size)
        if len(group) == batch_size:
            out.append(list(group))
            group.clear()
    return out


def measure(config: DetectionConfig, images: int, batch_size: int, grouped: bool, seed: int = 0) -> tuple[int, float]:
    """(distinct padded shapes, padded / real pixels) of one epoch."""
    divisor = pad_divisor(config.model.backbone.resolved_patch_size, config.data.pad_size_multiple)
    shapes, real, padded = set(), 0, 0
    for batch in batches(coco_like_sizes(config, images, np.random.default_rng(seed)), batch_size, grouped):
        height, width = padded_shape(batch, divisor)
        shapes.add((height, width))
        real += sum(h * w for h, w in batch)
        padded += len(batch) * height * width
    return len(shapes), padded / real


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/detection/coco_vit_b16.yaml")
    parser.add_argument("--images", type=int, default=1600, help="images per epoch (default 1600)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--multiples", nargs="+", default=["null", "64", "128", "256"],
                        help="data.pad_size_multiple values (null = the patch size only)")
    args = parser.parse_args(argv)
    print(f"{args.config}: {args.images} COCO-like images per epoch")
    header = f"{'pad_size_multiple':>18}{'batch':>7}{'shapes':>8}{'padded/real':>13}{'grouped shapes':>16}{'grouped p/r':>13}"
    print(header)
    print("-" * len(header))
    for multiple in args.multiples:
        config = load_config(DetectionConfig, args.config, [f"data.pad_size_multiple={multiple}"])
        for batch_size in args.batch_sizes:
            shapes, ratio = measure(config, args.images, batch_size, grouped=False)
            grouped_shapes, grouped_ratio = measure(config, args.images, batch_size, grouped=True)
            print(f"{multiple:>18}{batch_size:>7}{shapes:>8}{ratio:>13.3f}{grouped_shapes:>16}{grouped_ratio:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
