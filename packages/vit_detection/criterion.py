"""DETR's set loss: Hungarian matching, then class, L1 and GIoU terms on the matched pairs.

For every decoder layer (the last one and, with auxiliary losses, each earlier one, each
re-matched on its own predictions; Carion et al. 2020, sec. 3.2):

* ``loss_ce``: cross-entropy over all B * Q queries and C + 1 classes, unmatched queries
  labelled "no object" (index C), whose class weight is `eos_coef` (the no-object class
  outnumbers the objects ~25:1 on COCO). It is the weighted mean sum(w[t] * nll) / sum(w[t]),
  so it is NOT divided by the number of boxes.
  With sigmoid class scores (`scores`) it is instead the sigmoid focal loss (Lin et al. 2017,
  alpha and gamma as configured) of every query and class against a one-hot target (all zeros
  for "no object"), summed and divided by `num_boxes` as Deformable DETR does.
* ``loss_bbox``: sum of |pred - target| over matched pairs and the 4 normalised cxcywh
  coordinates, divided by `num_boxes`.
* ``loss_giou``: sum of 1 - GIoU(pred, target) over matched pairs, divided by `num_boxes`.
* ``cardinality_error`` (logged, no gradient): mean over images of |#queries whose argmax is
  not "no object" (with sigmoid scores: some class above probability 0.5) - T_b|.
* ``class_error`` (logged, last layer only): 100 - top-1 accuracy (%) of the matched queries;
  100 when nothing is matched.

Layer l < L - 1 gets the suffix ``_l`` (``loss_ce_0`` ...). Denoising queries (DN-DETR; present
when the model was trained with them) get the same three terms with the suffix ``_dn`` (and
``_dn_l`` for earlier layers); their matching is known by construction. Two-stage encoder
proposals (present when the model has ``two_stage``) get the three terms with the suffix
``_enc``, matched on their own and with padding cells ignored (neither matched nor classified).

`num_boxes` is the number of target boxes per process averaged over the whole distributed
batch: every rank sums its boxes, the sums are all-reduced once and divided by the world size.
DDP then averages the gradients over ranks, so the box losses are normalised by the global
box count, exactly as if one process had seen the whole batch.

All box arithmetic runs in fp32 with autocast off: in bf16 the L1 terms of nearby boxes round
to zero and box areas lose the precision GIoU needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .box_ops import box_cxcywh_to_xyxy, check_boxes, paired_generalized_box_iou
from .matcher import HungarianMatcher, MatchIndices, image_ids_of
from .scores import ClassScore, check_class_score

__all__ = ["DEFAULT_WEIGHT_DICT", "SetCriterion", "denoising_indices", "global_num_boxes"]

DEFAULT_WEIGHT_DICT: dict[str, float] = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}

_LAYER_SUFFIX = re.compile(r"_\d+$")


def global_num_boxes(targets: Sequence[dict], device: torch.device | str) -> float | torch.Tensor:
    """The box-loss normaliser: target boxes per process, averaged over all processes, at least 1.

    In one process, the count of this process's `targets` as a Python float (their lengths are
    known on the host: no device work at all). When `torch.distributed` is initialised, the sum is
    all-reduced ONCE across processes, divided by the world size and clamped to >= 1 (a batch
    without boxes must not divide by zero), and returned as a 0-d tensor on `device`: the losses
    divide by it on the device, with no host read (a sync) per step. Every rank gets the same value.

    Args:
        targets: this process's target dicts, each with "labels" (T_b,).
        device: where the all-reduce runs (the backend's device, e.g. the model's).
    """
    local = float(sum(len(t["labels"]) for t in targets))
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return max(local, 1.0)
    count = torch.tensor([local], dtype=torch.float32, device=device)
    torch.distributed.all_reduce(count)
    return (count[0] / torch.distributed.get_world_size()).clamp(min=1.0)


def denoising_indices(targets: Sequence[dict], num_groups: int, group_size: int) -> list[MatchIndices]:
    """The fixed matching of denoising queries: query g * group_size + j reconstructs target j.

    Args:
        targets: B target dicts with "labels" (T_b,), T_b <= group_size.
        num_groups: number of noised copies G of every image's targets.
        group_size: queries per group M (the batch's largest T_b; slots j >= T_b are padding).

    Returns:
        B pairs (pred_idx, tgt_idx), int64 on the CPU, each of length G * T_b.
    """
    indices: list[MatchIndices] = []
    for target in targets:
        count = len(target["labels"])
        if count > group_size:
            raise ValueError(f"an image has {count} targets but the denoising groups hold {group_size}")
        slots = torch.arange(count, dtype=torch.int64)
        groups = torch.arange(num_groups, dtype=torch.int64)[:, None] * group_size
        indices.append(((groups + slots[None]).flatten(), slots.repeat(num_groups)))
    return indices


def _stack_layers(outputs: Mapping, use_aux: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, B, Q, C + 1) logits and (L, B, Q, 4) boxes: auxiliary layers first, the last layer last."""
    layers = list(outputs.get("aux_outputs", [])) if use_aux else []
    layers.append(outputs)
    return (
        torch.stack([layer["pred_logits"] for layer in layers]),
        torch.stack([layer["pred_boxes"] for layer in layers]),
    )


class SetCriterion(nn.Module):
    """DETR's loss for a batch: match, then weigh class and box errors (see the module docstring).

    Args:
        num_classes: C, the number of real classes (the logits have C + 1 columns; C with
            sigmoid scores).
        matcher: assigns predictions to targets per image and layer.
        eos_coef: class weight of "no object" in `loss_ce` (softmax scores).
        weight_dict: weight of each loss in `total`; keys are base names (``"loss_ce"``), which
            also weigh their layer- and denoising-suffixed variants (``"loss_ce_3"``,
            ``"loss_ce_dn"``) unless those are listed themselves.
        aux_loss: also supervise every decoder layer but the last ("aux_outputs").
        class_score: ``"softmax"`` (cross-entropy over C + 1) or ``"sigmoid"`` (focal loss over C);
            must be the model's and the matcher's.
        focal_alpha, focal_gamma: the sigmoid focal loss's parameters.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        eos_coef: float = 0.1,
        weight_dict: Mapping[str, float] | None = None,
        aux_loss: bool = True,
        class_score: ClassScore = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= eos_coef:
            raise ValueError(f"eos_coef must be >= 0, got {eos_coef}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.weight_dict = dict(DEFAULT_WEIGHT_DICT if weight_dict is None else weight_dict)
        self.aux_loss = aux_loss
        check_class_score(class_score)
        if matcher.class_score != class_score:
            raise ValueError(f"the criterion reads {class_score} class scores but its matcher {matcher.class_score}")
        self.class_score = class_score
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("empty_weight", class_weight, persistent=False)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, class_score={self.class_score!r}, eos_coef={self.eos_coef}, "
                f"aux_loss={self.aux_loss}")

    # ------------------------------------------------------------------ weights
    def weight_of(self, key: str) -> float | None:
        """The `total` weight of a loss key, or None when the key is only logged."""
        candidates = [key, _LAYER_SUFFIX.sub("", key)]
        candidates.append(candidates[-1].removesuffix("_dn").removesuffix("_enc"))
        for candidate in candidates:
            if candidate in self.weight_dict:
                return self.weight_dict[candidate]
        return None

    def total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss: sum of weight * loss over the keys `weight_dict` covers."""
        terms = [losses[key] * weight for key in losses if (weight := self.weight_of(key)) is not None]
        if not terms:
            raise ValueError(f"none of the loss keys {sorted(losses)} has a weight in {sorted(self.weight_dict)}")
        return torch.stack(terms).sum()

    # ------------------------------------------------------------------ forward
    def forward(
        self, outputs: Mapping, targets: Sequence[dict], num_boxes: float | torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """All losses of a batch.

        Args:
            outputs: the model's dict: "pred_logits" (B, Q, C + 1) ((B, Q, C) with sigmoid
                scores), "pred_boxes" (B, Q, 4)
                sigmoid cxcywh normalised by each image's unpadded size, optionally
                "aux_outputs" (list of dicts with the same keys, one per earlier decoder layer),
                "dn_outputs" / "dn_meta" (denoising queries) and "enc_outputs" (two-stage
                proposals with "pred_valid"), see `DETR`.
            targets: B dicts with "labels" int64 (T_b,) in 0..C-1 and "boxes" (T_b, 4)
                normalised cxcywh; "image_id", when present, is named in errors.
            num_boxes: the box-loss normaliser; None computes it with `global_num_boxes`
                (pass it explicitly when accumulating gradients over several batches).

        Returns:
            0-dim tensors: "loss_ce", "loss_bbox", "loss_giou" (with gradients),
            "cardinality_error", "class_error" (detached), the same per auxiliary layer with
            suffix ``_0`` .. ``_{L-2}`` (no class_error), and the denoising and encoder terms
            when present.
        """
        logits, boxes = _stack_layers(outputs, self.aux_loss)
        device = logits.device
        if num_boxes is None:
            num_boxes = global_num_boxes(targets, device)
        labels = [t["labels"].to(device) for t in targets]
        tgt_boxes = [t["boxes"].to(device) for t in targets]
        matched_targets = [{"labels": lab, "boxes": box} for lab, box in zip(labels, tgt_boxes, strict=True)]
        for target, matched in zip(targets, matched_targets, strict=True):
            if "image_id" in target:
                matched["image_id"] = target["image_id"]

        indices = self.matcher.match_layers(logits, boxes, matched_targets)
        per_layer = self._layer_losses(logits, boxes, indices, labels, tgt_boxes, num_boxes, no_object=True)
        losses = _name_layers(per_layer, suffix="")
        losses["class_error"] = _class_error(logits[-1], indices[-1], labels)

        if "dn_outputs" in outputs:
            meta = outputs["dn_meta"]
            dn_logits, dn_boxes = _stack_layers(outputs["dn_outputs"], self.aux_loss)
            image_ids = image_ids_of(targets)
            for layer in range(dn_boxes.shape[0]):
                check_boxes(dn_boxes[layer], "denoising pred_boxes", image_ids, layer=layer)
            dn_indices = denoising_indices(targets, meta["num_groups"], meta["group_size"])
            dn_per_layer = self._layer_losses(
                dn_logits, dn_boxes, [dn_indices] * dn_logits.shape[0], labels, tgt_boxes,
                num_boxes * meta["num_groups"], no_object=False,
            )
            losses.update(_name_layers(dn_per_layer, suffix="_dn"))

        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            enc_logits, enc_boxes = enc["pred_logits"][None], enc["pred_boxes"][None]
            valid = enc.get("pred_valid")
            valid = None if valid is None else valid[None].to(device)
            enc_indices = self.matcher.match_layers(enc_logits, enc_boxes, matched_targets, valid=valid)
            enc_losses = self._layer_losses(enc_logits, enc_boxes, enc_indices, labels, tgt_boxes, num_boxes,
                                            no_object=True, valid=valid)
            losses.update(_name_layers(enc_losses, suffix="_enc"))
        return losses

    def _layer_losses(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        indices: list[list[MatchIndices]],
        labels: list[torch.Tensor],
        tgt_boxes: list[torch.Tensor],
        num_boxes: float | torch.Tensor,
        no_object: bool,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-layer losses, all layers in one batched pass.

        Args:
            logits: (L, B, Q, C + 1) ((L, B, Q, C) with sigmoid scores); boxes: (L, B, Q, 4) cxcywh.
            indices: per layer, per image (pred_idx, tgt_idx).
            labels, tgt_boxes: per image (T_b,) and (T_b, 4), on the device of `logits`.
            num_boxes: normaliser of the box terms.
            no_object: True: unmatched queries are "no object" (weighted by eos_coef, or
                negatives of every class in the focal loss), and the cardinality error is reported. False (denoising): unmatched queries are ignored.
            valid: optional (L, B, Q) bool; predictions where it is False are left out of the
                class loss and the cardinality (padding cells of two-stage proposals).

        Returns:
            name -> (L,) tensor.
        """
        num_layers, batch, num_queries, num_logits = logits.shape
        device = logits.device
        # Flatten every (layer, image, pair) into index vectors so each term is one tensor op.
        offsets = [0]
        for lab in labels:
            offsets.append(offsets[-1] + len(lab))
        layer_ids, image_ids, pred_ids, tgt_ids = [], [], [], []
        for layer, per_image in enumerate(indices):
            for image, (pred_idx, tgt_idx) in enumerate(per_image):
                layer_ids.append(torch.full_like(pred_idx, layer))
                image_ids.append(torch.full_like(pred_idx, image))
                pred_ids.append(pred_idx)
                tgt_ids.append(tgt_idx + offsets[image])
        layer_idx = torch.cat(layer_ids).to(device)
        image_idx = torch.cat(image_ids).to(device)
        pred_idx = torch.cat(pred_ids).to(device)
        tgt_idx = torch.cat(tgt_ids).to(device)
        all_labels = torch.cat(labels)
        all_boxes = torch.cat(tgt_boxes)

        with torch.autocast(device_type=device.type, enabled=False):
            # Classification: every query gets a class; unmatched ones "no object" or ignored.
            # The buffer follows .to(); a criterion left on the CPU still works for device logits.
            fill = self.num_classes if no_object else -100
            target_classes = torch.full((num_layers, batch, num_queries), fill, dtype=torch.int64, device=device)
            target_classes[layer_idx, image_idx, pred_idx] = all_labels[tgt_idx]
            if valid is not None:
                target_classes = target_classes.masked_fill(~valid, -100)
            flat_targets = target_classes.flatten()
            if self.class_score == "softmax":
                class_weight = self.empty_weight.to(device)
                nll = F.cross_entropy(
                    logits.float().flatten(0, 2), flat_targets, weight=class_weight, reduction="none"
                ).view(num_layers, -1)
                element_weight = class_weight[flat_targets.clamp(min=0)] * (flat_targets >= 0)
                tiny = torch.finfo(torch.float32).tiny
                loss_ce = nll.sum(1) / element_weight.view(num_layers, -1).sum(1).clamp(min=tiny)
            else:
                # One-hot over C + 1 and the "no object" column dropped: unmatched queries are
                # negatives of every class; ignored ones (-100) are left out entirely.
                one_hot = F.one_hot(flat_targets.clamp(min=0), self.num_classes + 1)[:, :-1].float()
                focal = sigmoid_focal_loss(logits.float().flatten(0, 2), one_hot, alpha=self.focal_alpha,
                                           gamma=self.focal_gamma, reduction="none")
                kept = (flat_targets >= 0).float()
                loss_ce = (focal.sum(-1) * kept).view(num_layers, -1).sum(1) / num_boxes

            src = boxes[layer_idx, image_idx, pred_idx].float()
            tgt = all_boxes[tgt_idx].float()
            l1 = (src - tgt).abs().sum(-1)
            giou = 1.0 - paired_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
            zeros = torch.zeros(num_layers, dtype=torch.float32, device=device)
            loss_bbox = zeros.index_add(0, layer_idx, l1) / num_boxes
            loss_giou = zeros.index_add(0, layer_idx, giou) / num_boxes

        losses = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        if no_object:
            with torch.no_grad():
                if self.class_score == "softmax":
                    positive = logits.argmax(-1) != num_logits - 1  # (L, B, Q)
                else:
                    positive = logits.amax(-1) > 0  # some class with probability > 0.5
                if valid is not None:
                    positive &= valid
                predicted = positive.sum(-1).float()  # (L, B)
                counts = torch.tensor([float(len(lab)) for lab in labels], device=device)
                losses["cardinality_error"] = (predicted - counts).abs().mean(-1)
        return losses


def _name_layers(per_layer: dict[str, torch.Tensor], suffix: str) -> dict[str, torch.Tensor]:
    """name -> (L,) into name+suffix (last layer) and name+suffix+"_l" (earlier layers) -> 0-dim."""
    named: dict[str, torch.Tensor] = {}
    for name, values in per_layer.items():
        last = values.shape[0] - 1
        for layer in range(values.shape[0]):
            named[f"{name}{suffix}" if layer == last else f"{name}{suffix}_{layer}"] = values[layer]
    return named


@torch.no_grad()
def _class_error(logits: torch.Tensor, indices: list[MatchIndices], labels: list[torch.Tensor]) -> torch.Tensor:
    """100 - top-1 accuracy (%) over all logits (C + 1, or C) of the matched queries; 100 with no matches."""
    predicted = [logits[image, pred_idx.to(logits.device)].argmax(-1) for image, (pred_idx, _) in enumerate(indices)]
    expected = [labels[image][tgt_idx.to(logits.device)] for image, (_, tgt_idx) in enumerate(indices)]
    predicted_all, expected_all = torch.cat(predicted), torch.cat(expected)
    if predicted_all.numel() == 0:
        return torch.tensor(100.0, device=logits.device)
    return 100.0 - 100.0 * (predicted_all == expected_all).float().mean()
