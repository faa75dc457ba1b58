"""Pictures of detections: boxes and "class score" captions drawn with torchvision.

The score threshold here is for display only; evaluation always sees every prediction.
Predicted boxes get one colour per class; ground truth, when given, is drawn in white under them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes

__all__ = ["MIN_LONG_SIDE", "class_colors", "denormalize", "draw_detections", "save_overlays", "target_boxes_xyxy",
           "upscale_factor"]

# Overlays are drawn at least this large on their long side: a 64-px scene is unreadable as a
# file, and captions drawn at its own size would cover it.
MIN_LONG_SIDE = 400

# Matplotlib's "tab10" colours, repeated for more classes: distinct on photos and on dark scenes.
_TAB10: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One RGB colour per class index (tab10, cycled)."""
    return [_TAB10[i % len(_TAB10)] for i in range(num_classes)]


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the input normalisation: float (3, H, W) ``(x - mean) / std`` -> uint8 (3, H, W) RGB."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    pixels = image.detach().float().cpu() * std_t + mean_t
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8)


def target_boxes_xyxy(boxes: torch.Tensor, size: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Target boxes (normalised cxcywh, `CocoDetection`'s format) -> absolute xyxy pixels of `size` (h, w)."""
    height, width = (int(v) for v in size)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return box_convert(boxes.detach().float().cpu().reshape(-1, 4), in_fmt="cxcywh", out_fmt="xyxy") * scale


def upscale_factor(height: int, width: int, min_long_side: int = MIN_LONG_SIDE) -> int:
    """The smallest whole factor that brings the long side of an image to at least `min_long_side` (1 if it is)."""
    return max(1, math.ceil(min_long_side / max(height, width, 1)))


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor | None,
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    gt_boxes: torch.Tensor | None = None,
    width: int = 2,
) -> torch.Tensor:
    """Draw the detections scoring at least `score_threshold` on one image.

    Args:
        image: uint8 (3, H, W) RGB.
        boxes: (Q, 4) absolute (x0, y0, x1, y1) pixels of this image.
        labels: (Q,) contiguous class indices into `class_names`.
        scores: (Q,) in [0, 1], or None to draw every box without a score (ground truth).
        class_names: names, index = label.
        score_threshold: lowest score drawn (display only).
        gt_boxes: optional (T, 4) absolute xyxy ground-truth boxes, drawn first in white.
        width: line width in pixels.

    Returns:
        uint8 (3, H, W), a new tensor.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) image, got {tuple(image.shape)} {image.dtype}")
    canvas = image.detach().cpu()
    if gt_boxes is not None and len(gt_boxes):
        canvas = draw_bounding_boxes(canvas, gt_boxes.detach().float().cpu().reshape(-1, 4),
                                     colors="white", width=max(1, width - 1))
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    labels = labels.detach().cpu().reshape(-1).long()
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if scores is not None:
        scores = scores.detach().float().cpu().reshape(-1)
        keep = scores >= score_threshold
    if not bool(keep.any()):
        return canvas.clone()
    palette = class_colors(max(len(class_names), 1))
    captions, colors = [], []
    for index in torch.nonzero(keep).flatten().tolist():
        label = int(labels[index])
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        captions.append(name if scores is None else f"{name} {float(scores[index]):.2f}")
        colors.append(palette[label % len(palette)])
    return draw_bounding_boxes(canvas, boxes[keep], labels=captions, colors=colors, width=width)


def save_overlays(
    images: Sequence[torch.Tensor],
    predictions: Sequence[Mapping[str, torch.Tensor]],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    names: Sequence[str] | None = None,
    gt_boxes: Sequence[torch.Tensor] | None = None,
    min_long_side: int = MIN_LONG_SIDE,
) -> list[Path]:
    """Write one PNG per image with its detections drawn (`draw_detections`).

    Small images are first enlarged by a whole factor (`upscale_factor`, nearest neighbour, so
    pixels stay sharp squares) until the long side is at least `min_long_side`; boxes and
    captions are then drawn at that size, where they are legible.

    Args:
        images: uint8 (3, H_i, W_i) RGB images (e.g. `denormalize` of the unpadded inputs).
        predictions: per image ``{"scores", "labels", "boxes"}`` with boxes absolute xyxy in the
            pixels of that image (scale them to its size first).
        output_dir: created if needed.
        class_names: names, index = label.
        score_threshold: lowest score drawn.
        names: file stems (default ``overlay_000``, ``overlay_001``, ...).
        gt_boxes: optional ground truth per image, absolute xyxy (`target_boxes_xyxy`).
        min_long_side: enlarge images whose long side is shorter (0 keeps every image's size).

    Returns:
        The written paths.
    """
    if len(images) != len(predictions):
        raise ValueError(f"got {len(images)} images but {len(predictions)} prediction dicts")
    if names is not None and len(names) != len(images):
        raise ValueError(f"got {len(images)} images but {len(names)} names")
    if gt_boxes is not None and len(gt_boxes) != len(images):
        raise ValueError(f"got {len(images)} images but {len(gt_boxes)} ground-truth box sets")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, prediction) in enumerate(zip(images, predictions, strict=True)):
        factor = upscale_factor(image.shape[-2], image.shape[-1], min_long_side) if min_long_side else 1
        truth = None if gt_boxes is None else gt_boxes[i]
        boxes = prediction["boxes"]
        if factor > 1:
            image = image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)  # nearest neighbour
            boxes = boxes.detach().float() * factor
            truth = None if truth is None else truth.detach().float() * factor
        drawn = draw_detections(
            image, boxes, prediction["labels"], prediction.get("scores"), class_names,
            score_threshold, gt_boxes=truth,
        )
        path = output_dir / f"{names[i] if names is not None else f'overlay_{i:03d}'}.png"
        # PIL, not torchvision.io: torchvision 0.29 deprecates its image encoders.
        Image.fromarray(drawn.permute(1, 2, 0).contiguous().numpy()).save(path)
        paths.append(path)
    return paths
