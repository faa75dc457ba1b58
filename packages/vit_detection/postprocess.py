"""From the model's outputs to detections in original image pixels, ready for COCO evaluation."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .box_ops import box_cxcywh_to_xyxy

__all__ = ["PostProcess"]


class PostProcess(nn.Module):
    """DETR's post-processing: one scored detection per query, no threshold, no NMS.

    The score of a query is its highest softmax probability among the C real classes (the
    no-object column takes part in the softmax but not in the max), so when "no object" wins
    the query still reports its second-best class with a low score. Nothing is thresholded:
    AP is a ranking metric and a threshold before COCOeval only loses recall. Boxes are not
    clipped to the image (as DETR).
    """

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, torch.Tensor], orig_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Convert a batch.

        Args:
            outputs: "pred_logits" (B, Q, C + 1) and "pred_boxes" (B, Q, 4) sigmoid cxcywh
                normalised by each image's unpadded (augmented) size.
            orig_sizes: (B, 2) (height, width) of each ORIGINAL image in pixels (the targets'
                "orig_size"); normalised coordinates scale to it directly because resizing keeps
                relative positions.

        Returns:
            B dicts: "scores" float32 (Q,), "labels" int64 (Q,) in 0..C-1 (contiguous, as the
            targets), "boxes" float32 (Q, 4) absolute (x0, y0, x1, y1) in original pixels.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if orig_sizes.shape != (logits.shape[0], 2):
            raise ValueError(f"orig_sizes must be (B, 2) = {(logits.shape[0], 2)} (height, width), "
                             f"got {tuple(orig_sizes.shape)}")
        prob = logits.float().softmax(-1)
        scores, labels = prob[..., :-1].max(-1)
        heights, widths = orig_sizes.to(boxes.device).float().unbind(1)
        scale = torch.stack([widths, heights, widths, heights], dim=1)[:, None, :]
        xyxy = box_cxcywh_to_xyxy(boxes.float()) * scale
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, xyxy, strict=True)]
