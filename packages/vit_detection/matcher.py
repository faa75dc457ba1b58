"""The Hungarian matcher: a one-to-one assignment of predictions to targets per image.

DETR predicts a fixed set of Q boxes; the loss first finds, for every image, the assignment
of its T targets to T of the Q predictions with the lowest total cost (Carion et al. 2020,
eq. 1), then supervises the matched predictions with their targets and all others with "no
object". The cost of predicting target j with query i is

    cost_class * (-p_i[label_j]) + cost_bbox * |b_i - b_j|_1 + cost_giou * (-GIoU(b_i, b_j))

where p_i is the softmax over all C + 1 classes. The class cost approximates the NLL by
1 - p (the constant 1 changes no assignment, so it is dropped): unlike the log it is bounded,
which keeps it commensurable with the box costs. With sigmoid class scores (`scores`) the class
term is instead the focal cost: how much the sigmoid focal loss of logit (i, label_j) changes when
query i becomes a positive of that class (`scores.focal_matching_cost`).

The costs of all images (and, for the auxiliary losses, all decoder layers) are computed in
one batched pass, each image against its own targets only, and moved to the CPU once, together
with the boxes they are checked on (one host-device sync per call); `scipy.optimize.linear_sum_assignment`
then runs on each image's (Q, T_b) block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .box_ops import box_cxcywh_to_xyxy, check_boxes, describe_location, generalized_box_iou
from .scores import ClassScore, check_class_score, focal_matching_cost

__all__ = ["HungarianMatcher", "MatchIndices", "image_ids_of"]

# (prediction indices, target indices), both int64 of the same length min(Q, T_b); prediction
# indices ascending, as scipy returns them.
MatchIndices = tuple[torch.Tensor, torch.Tensor]

_EXCLUDED_COST = 1e6


def image_ids_of(targets: Sequence[dict]) -> list[object | None]:
    """Each target's "image_id" as a plain Python value (None when absent), for error messages."""
    ids: list[object | None] = []
    for target in targets:
        image_id = target.get("image_id")
        if isinstance(image_id, torch.Tensor):
            image_id = image_id.item() if image_id.numel() == 1 else image_id.tolist()
        ids.append(image_id)
    return ids


class HungarianMatcher(nn.Module):
    """Optimal one-to-one matching of predictions to targets (no gradients).

    Args:
        cost_class: weight of the class cost (-p(target class), or the focal cost).
        cost_bbox: weight of the L1 distance between normalised cxcywh boxes.
        cost_giou: weight of -GIoU between the boxes in xyxy.
        class_score: how the logits read (`scores`): ``"softmax"`` over C + 1 (DETR) or
            ``"sigmoid"`` over C (the focal cost).
        focal_alpha, focal_gamma: the focal loss's parameters, for the sigmoid class cost.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_score: ClassScore = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher needs at least one non-zero cost (cost_class, cost_bbox, cost_giou)")
        check_class_score(class_score)
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.class_score = class_score
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
                f"class_score={self.class_score!r}")

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: Sequence[dict]) -> list[MatchIndices]:
        """Match one set of predictions.

        Args:
            outputs: "pred_logits" (B, Q, C + 1) (last index = no object; (B, Q, C) with sigmoid
                scores) and "pred_boxes"
                (B, Q, 4) normalised cxcywh.
            targets: B dicts with "labels" int64 (T_b,) in 0..C-1 and "boxes" (T_b, 4)
                normalised cxcywh; T_b may be 0.

        Returns:
            B pairs (pred_idx, tgt_idx), int64 on the CPU, each of length min(Q, T_b).
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        return self.match_layers(logits[None], boxes[None], targets)[0]

    @torch.no_grad()
    def match_layers(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict], valid: torch.Tensor | None = None
    ) -> list[list[MatchIndices]]:
        """Match the predictions of L decoder layers at once (each layer matched on its own).

        Args:
            logits: (L, B, Q, C + 1) class logits ((L, B, Q, C) with sigmoid scores), any float dtype.
            boxes: (L, B, Q, 4) normalised cxcywh boxes.
            targets: B target dicts as in `forward`.
            valid: optional (L, B, Q) bool, False for predictions that must not be matched
                (the padding cells of two-stage encoder proposals); they are used only when an
                image has fewer valid predictions than targets.

        Returns:
            L lists of B (pred_idx, tgt_idx) pairs.

        Raises:
            ValueError: a prediction or target box is non-finite or degenerate, or a logit is
                non-finite (names the image).
        """
        num_layers, batch, num_queries = logits.shape[:3]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {batch} images")
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [[(empty, empty) for _ in range(batch)] for _ in range(num_layers)]

        image_ids = image_ids_of(targets)
        # Only each image's own (Q, T_b) block is needed: targets are padded to M = max T_b per
        # image and the cost is built as (L, B, Q, M), not as DETR's (L*B*Q, sum T_b) matrix,
        # of which all but 1/B would be thrown away. Padding slots hold a harmless unit box.
        device = logits.device
        most = max(sizes)
        tgt_labels = torch.zeros(batch, most, dtype=torch.int64, device=device)
        tgt_boxes = torch.tensor([0.5, 0.5, 1.0, 1.0], device=device).repeat(batch, most, 1)
        for image, target in enumerate(targets):
            tgt_labels[image, : sizes[image]] = target["labels"].to(device)
            tgt_boxes[image, : sizes[image]] = target["boxes"].to(device).float()

        # fp32 even under autocast: a bf16/fp16 softmax, L1 or box area changes the assignment
        # and can overflow to inf, which linear_sum_assignment rejects.
        with torch.autocast(device_type=device.type, enabled=False):
            label_index = tgt_labels[None, :, None, :].expand(num_layers, -1, num_queries, -1)
            if self.class_score == "softmax":
                cost_class = -logits.float().softmax(-1).gather(-1, label_index)  # (L, B, Q, M)
            else:
                target_logits = logits.float().gather(-1, label_index)
                cost_class = focal_matching_cost(target_logits, self.focal_alpha, self.focal_gamma)
            pred_boxes = boxes.float()  # (L, B, Q, 4)
            cost_bbox = torch.cdist(pred_boxes.flatten(0, 1), tgt_boxes.repeat(num_layers, 1, 1), p=1)
            cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes)[None])
            cost = (self.cost_bbox * cost_bbox.view(num_layers, batch, num_queries, most)
                    + self.cost_class * cost_class + self.cost_giou * cost_giou)
            if valid is not None:
                # Far above any real cost (each term is bounded by a few units), yet finite:
                # linear_sum_assignment needs a feasible matrix.
                cost = cost.masked_fill(~valid.to(device)[..., None], _EXCLUDED_COST)

        # ONE transfer to the host per call (the step's one sync for matching): the costs of all
        # layers and images, and the boxes to check, read together; checks and scipy then work on
        # host copies. Boxes are checked before the costs so a bad box is named as such.
        parts = (cost, boxes.detach().float(), tgt_boxes)
        host = torch.cat([part.reshape(-1) for part in parts]).cpu()
        cost, host_pred, host_targets = (chunk.view(part.shape) for chunk, part in
                                         zip(host.split([part.numel() for part in parts]), parts, strict=True))
        check_boxes([host_targets[image, : sizes[image]] for image in range(batch)], "target boxes", image_ids,
                    allow_empty_area=False)
        for layer in range(num_layers):
            check_boxes(host_pred[layer], "pred_boxes", image_ids, layer=layer if num_layers > 1 else None)
        if not bool(torch.isfinite(cost).all()):
            # The boxes passed their check, so the logits hold NaN or Inf (softmax -> NaN; the focal
            # cost of an infinite logit is infinite).
            layer, image = (int(i) for i in (~torch.isfinite(cost)).flatten(2).any(-1).nonzero()[0])
            where = describe_location("pred_logits", image, image_ids[image], layer if num_layers > 1 else None)
            raise ValueError(f"{where} hold NaN or Inf")
        result: list[list[MatchIndices]] = []
        for layer in range(num_layers):
            per_image: list[MatchIndices] = []
            for image in range(batch):
                if sizes[image] == 0:
                    per_image.append((empty, empty))
                    continue
                pred_idx, tgt_idx = linear_sum_assignment(cost[layer, image, :, : sizes[image]].numpy())
                per_image.append(
                    (torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64))
                )
            result.append(per_image)
        return result
