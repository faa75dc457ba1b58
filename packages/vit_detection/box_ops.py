"""Box formats, IoU and the one check every box passes before the matcher and the loss see it.

Formats (all in the last dimension, same units in and out):

* ``cxcywh``: centre x, centre y, width, height. The model predicts and the targets carry
  boxes in this format, normalised to [0, 1] by the unpadded image width and height.
* ``xyxy``: left, top, right, bottom. IoU, GIoU and the post-processed detections use it.

The conversions and IoUs are torchvision's (`torchvision.ops`); this module only names them
for this package and adds what torchvision lacks: the IoU of matched pairs without building
an N x N matrix, `inverse_sigmoid` for anchor refinement, and `check_boxes`.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, generalized_box_iou

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "check_boxes",
    "describe_location",
    "generalized_box_iou",
    "inverse_sigmoid",
    "paired_generalized_box_iou",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (cx, cy, w, h) -> (..., 4) (x0, y0, x1, y1), same dtype and units."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (x0, y0, x1, y1) -> (..., 4) (cx, cy, w, h), same dtype and units."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of each box with its partner: (N, 4) xyxy, (N, 4) xyxy -> (N,).

    torchvision's `generalized_box_iou` broadcasts over leading dimensions, so a batch of N
    1 x 1 problems gives the diagonal without the N x N matrix (and, unlike
    `generalized_box_iou_loss`, without an epsilon: the value is the plain GIoU formula).
    """
    return generalized_box_iou(boxes1[:, None], boxes2[:, None])[:, 0, 0]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x clamped below by `eps`.

    Anchor boxes live in [0, 1]; their refinement adds deltas in logit space, where the
    clamps keep a box at the image border from becoming infinite.
    """
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def describe_location(what: str, image_index: int, image_id: object | None, layer: int | None = None) -> str:
    """``"<what> of image 3 (image_id 42) at decoder layer 1"`` for error messages (unknown parts left out)."""
    where = f"image {image_index}" + (f" (image_id {image_id})" if image_id is not None else "")
    return f"{what} of {where}" + (f" at decoder layer {layer}" if layer is not None else "")


def check_boxes(
    boxes: torch.Tensor,
    what: str,
    image_ids: list[object | None] | None = None,
    allow_empty_area: bool = True,
    layer: int | None = None,
) -> None:
    """Raise a one-line ValueError for a non-finite or degenerate box, naming the image.

    Args:
        boxes: (B, N, 4) cxcywh boxes, one row per image (a padded batch of predictions), or
            a list-like of B tensors (N_b, 4) (targets); any float dtype.
        what: what the boxes are, for the message (e.g. ``"pred_boxes"``).
        image_ids: the dataset's id of each image, named in the message when known.
        allow_empty_area: accept width or height 0 (predictions: a sigmoid can underflow to 0
            and GIoU against a real target stays defined); targets need positive sizes,
            since two empty boxes make GIoU 0 / 0.
        layer: the decoder layer the predictions come from, for the message.

    Raises:
        ValueError: a box holds NaN or Inf, or has a negative (or, with
            `allow_empty_area=False`, zero) width or height.
    """
    per_image = list(boxes) if not isinstance(boxes, torch.Tensor) else list(boxes.unbind(0))
    if not per_image:
        return
    flat = torch.cat([b.reshape(-1, 4) for b in per_image], dim=0)
    if flat.numel() == 0:
        return
    sizes = flat[:, 2:]
    bad_size = sizes < 0 if allow_empty_area else sizes <= 0
    # One reduction (one host sync) in the common case; the slow search runs only on failure.
    if bool(torch.isfinite(flat).all()) and not bool(bad_size.any()):
        return
    for index, image_boxes in enumerate(per_image):
        image_boxes = image_boxes.reshape(-1, 4)
        image_id = image_ids[index] if image_ids is not None else None
        finite = torch.isfinite(image_boxes).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0])
            raise ValueError(
                f"{describe_location(what, index, image_id, layer)} has a non-finite box at row {row}: "
                f"{image_boxes[row].tolist()} (cx, cy, w, h)"
            )
        sizes = image_boxes[:, 2:]
        degenerate = (sizes < 0 if allow_empty_area else sizes <= 0).any(dim=1)
        if bool(degenerate.any()):
            row = int(degenerate.nonzero()[0])
            expected = "non-negative" if allow_empty_area else "positive"
            raise ValueError(
                f"{describe_location(what, index, image_id, layer)} has a degenerate box at row {row}: "
                f"{image_boxes[row].tolist()} (cx, cy, w, h; width and height must be {expected})"
            )
