"""Matcher, set loss and post-processing of vit_detection against independent float64 loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import vit_detection.matcher as matcher_module
from vit_detection.box_ops import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_generalized_box_iou,
)
from vit_detection.criterion import SetCriterion, denoising_indices, global_num_boxes
from vit_detection.matcher import HungarianMatcher
from vit_detection.postprocess import PostProcess
from vit_detection.scores import focal_matching_cost

NUM_CLASSES = 3


# ---------------------------------------------------------------------- independent references
def ref_giou(a: list[float], b: list[float]) -> float:
    """GIoU of two cxcywh boxes, plain Python floats."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def ref_cost(logits: torch.Tensor, boxes: torch.Tensor, target: dict, weights=(1.0, 5.0, 2.0)) -> list[list[float]]:
    """(Q, T) matching cost of one image, loops in float64."""
    prob = logits.double().softmax(-1)
    cost = []
    for q in range(len(boxes)):
        row = []
        for t in range(len(target["labels"])):
            pred, tgt = boxes[q].double().tolist(), target["boxes"][t].double().tolist()
            l1 = sum(abs(p - g) for p, g in zip(pred, tgt, strict=True))
            row.append(weights[0] * -prob[q, target["labels"][t]].item() + weights[1] * l1
                       + weights[2] * -ref_giou(pred, tgt))
        cost.append(row)
    return cost


def brute_force_match(cost: list[list[float]]) -> tuple[float, dict[int, int]]:
    """Minimum total cost over every injective target -> query assignment, and that assignment."""
    num_queries, num_targets = len(cost), len(cost[0]) if cost else 0
    if num_targets == 0:
        return 0.0, {}
    best, best_map = math.inf, {}
    for queries in itertools.permutations(range(num_queries), num_targets):
        total = sum(cost[q][t] for t, q in enumerate(queries))
        if total < best:
            best, best_map = total, {q: t for t, q in enumerate(queries)}
    return best, best_map


def ref_focal_terms(logit: float, alpha: float, gamma: float) -> tuple[float, float]:
    """(loss if this class is the target, loss if it is not) of one sigmoid logit, math only."""
    p = 1.0 / (1.0 + math.exp(-logit))
    positive = -alpha * (1.0 - p) ** gamma * math.log(p)
    negative = -(1.0 - alpha) * p ** gamma * math.log(1.0 - p)
    return positive, negative


def ref_sigmoid_cost(logits: torch.Tensor, boxes: torch.Tensor, target: dict, alpha: float = 0.25,
                     gamma: float = 2.0, weights=(2.0, 5.0, 2.0)) -> list[list[float]]:
    """(Q, T) matching cost with the focal class cost: the focal loss's change if q becomes a positive."""
    cost = []
    for q in range(len(boxes)):
        row = []
        for t in range(len(target["labels"])):
            positive, negative = ref_focal_terms(logits[q, int(target["labels"][t])].item(), alpha, gamma)
            pred, tgt = boxes[q].double().tolist(), target["boxes"][t].double().tolist()
            l1 = sum(abs(p - g) for p, g in zip(pred, tgt, strict=True))
            row.append(weights[0] * (positive - negative) + weights[1] * l1 + weights[2] * -ref_giou(pred, tgt))
        cost.append(row)
    return cost


def ref_losses(outputs: dict, targets: list[dict], num_boxes: float, eos_coef: float = 0.1,
               class_score: str = "softmax", alpha: float = 0.25, gamma: float = 2.0) -> dict[str, float]:
    """DETR's losses per layer with per-layer brute-force matching, float64 loops.

    The class term is the eos_coef-weighted mean cross-entropy over C + 1 (softmax), or the focal
    loss of every query and class divided by num_boxes (sigmoid).
    """
    sigmoid = class_score == "sigmoid"
    layers = list(outputs.get("aux_outputs", [])) + [outputs]
    result: dict[str, float] = {}
    for index, layer in enumerate(layers):
        suffix = "" if index == len(layers) - 1 else f"_{index}"
        class_num = class_den = l1 = giou = card = 0.0
        correct = matched = 0
        for image, target in enumerate(targets):
            logits, boxes = layer["pred_logits"][image].double(), layer["pred_boxes"][image].double()
            cost = (ref_sigmoid_cost(logits, boxes, target, alpha, gamma) if sigmoid
                    else ref_cost(logits, boxes, target))
            _, assignment = brute_force_match(cost)
            for q in range(len(logits)):
                cls = int(target["labels"][assignment[q]]) if q in assignment else None
                if sigmoid:
                    for c in range(NUM_CLASSES):
                        positive, negative = ref_focal_terms(logits[q, c].item(), alpha, gamma)
                        class_num += positive if c == cls else negative
                else:
                    weight = eos_coef if cls is None else 1.0
                    class_num += -weight * logits.log_softmax(-1)[q, NUM_CLASSES if cls is None else cls].item()
                    class_den += weight
                if q in assignment:
                    pred, tgt = boxes[q].tolist(), target["boxes"][assignment[q]].double().tolist()
                    l1 += sum(abs(p - g) for p, g in zip(pred, tgt, strict=True))
                    giou += 1 - ref_giou(pred, tgt)
                    matched += 1
                    correct += int(int(logits[q].argmax()) == cls)
            # predicted objects: some sigmoid above 0.5, or an argmax that is not "no object"
            predicted = sum(int(row.max().item() > 0 if sigmoid else int(row.argmax()) != NUM_CLASSES) for row in logits)
            card += abs(predicted - len(target["labels"])) / len(targets)
        result[f"loss_ce{suffix}"] = class_num / num_boxes if sigmoid else class_num / class_den
        result[f"loss_bbox{suffix}"] = l1 / num_boxes
        result[f"loss_giou{suffix}"] = giou / num_boxes
        result[f"cardinality_error{suffix}"] = card
        if not suffix:
            result["class_error"] = 100.0 - 100.0 * correct / matched if matched else 100.0
    return result


def sigmoid_criterion(alpha: float = 0.25, gamma: float = 2.0) -> SetCriterion:
    matcher = HungarianMatcher(cost_class=2.0, class_score="sigmoid", focal_alpha=alpha, focal_gamma=gamma)
    return SetCriterion(NUM_CLASSES, matcher, class_score="sigmoid", focal_alpha=alpha, focal_gamma=gamma)


# ---------------------------------------------------------------------- data
def random_boxes(count: int) -> torch.Tensor:
    centres = 0.2 + 0.6 * torch.rand(count, 2)
    sizes = 0.05 + 0.3 * torch.rand(count, 2)
    return torch.cat([centres, sizes], dim=1)


def random_targets(counts: list[int]) -> list[dict]:
    return [
        {"labels": torch.randint(0, NUM_CLASSES, (n,)), "boxes": random_boxes(n), "image_id": torch.tensor(10 + i)}
        for i, n in enumerate(counts)
    ]


def random_outputs(batch: int, queries: int, aux_layers: int = 0, num_logits: int = NUM_CLASSES + 1) -> dict:
    def layer() -> dict:
        return {"pred_logits": torch.randn(batch, queries, num_logits) * 2,
                "pred_boxes": torch.cat([torch.rand(batch, queries, 2), 0.05 + 0.4 * torch.rand(batch, queries, 2)], -1)}
    outputs = layer()
    if aux_layers:
        outputs["aux_outputs"] = [layer() for _ in range(aux_layers)]
    return outputs


# ---------------------------------------------------------------------- box_ops
def test_box_conversions_round_trip_and_match_hand_values() -> None:
    cxcywh = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)


def test_paired_giou_is_the_diagonal_of_the_pairwise_matrix() -> None:
    a, b = box_cxcywh_to_xyxy(random_boxes(7)), box_cxcywh_to_xyxy(random_boxes(7))
    torch.testing.assert_close(paired_generalized_box_iou(a, b), generalized_box_iou(a, b).diagonal())
    expected = [ref_giou(p, g) for p, g in zip(box_xyxy_to_cxcywh(a).tolist(), box_xyxy_to_cxcywh(b).tolist(), strict=True)]
    torch.testing.assert_close(paired_generalized_box_iou(a, b).double(), torch.tensor(expected, dtype=torch.float64))


# ---------------------------------------------------------------------- matcher
@pytest.mark.parametrize("seed", range(6))
def test_matcher_finds_the_brute_force_optimum(seed: int) -> None:
    torch.manual_seed(seed)
    num_queries = 3 + seed % 4  # 3..6
    counts = [min(seed % 5, num_queries), 0, min(4, num_queries)]  # includes an empty image
    targets = random_targets(counts)
    outputs = random_outputs(len(counts), num_queries)
    indices = HungarianMatcher()(outputs, targets)
    for image, (target, (pred_idx, tgt_idx)) in enumerate(zip(targets, indices, strict=True)):
        assert pred_idx.dtype == tgt_idx.dtype == torch.int64
        assert len(pred_idx) == len(tgt_idx) == len(target["labels"])
        cost = ref_cost(outputs["pred_logits"][image], outputs["pred_boxes"][image], target)
        best, _ = brute_force_match(cost)
        found = sum(cost[q][t] for q, t in zip(pred_idx.tolist(), tgt_idx.tolist(), strict=True))
        assert found == pytest.approx(best, abs=1e-5)
        assert sorted(tgt_idx.tolist()) == list(range(len(target["labels"])))
        assert len(set(pred_idx.tolist())) == len(pred_idx)


@pytest.mark.parametrize("seed", range(4))
def test_sigmoid_matcher_finds_the_brute_force_optimum_of_the_focal_cost(seed: int) -> None:
    torch.manual_seed(100 + seed)
    counts = [min(1 + seed, 4), 0, 3]
    targets = random_targets(counts)
    outputs = random_outputs(len(counts), 5, num_logits=NUM_CLASSES)
    matcher = HungarianMatcher(cost_class=2.0, class_score="sigmoid", focal_alpha=0.3, focal_gamma=1.5)
    for image, (target, (pred_idx, tgt_idx)) in enumerate(zip(targets, matcher(outputs, targets), strict=True)):
        cost = ref_sigmoid_cost(outputs["pred_logits"][image], outputs["pred_boxes"][image], target, 0.3, 1.5)
        best, _ = brute_force_match(cost)
        found = sum(cost[q][t] for q, t in zip(pred_idx.tolist(), tgt_idx.tolist(), strict=True))
        assert found == pytest.approx(best, abs=1e-5)
        assert sorted(tgt_idx.tolist()) == list(range(len(target["labels"])))


def test_focal_matching_cost_stays_finite_for_saturated_logits() -> None:
    logits = torch.tensor([-200.0, -20.0, 0.0, 20.0, 200.0])
    cost = focal_matching_cost(logits, 0.25, 2.0)
    assert torch.isfinite(cost).all()
    # A confident right class costs less than an unsure one, which costs less than a confident wrong one.
    assert cost[4] < cost[2] < cost[0]
    expected = [ref_focal_terms(x, 0.25, 2.0) for x in (-20.0, 0.0, 20.0)]
    torch.testing.assert_close(cost[1:4].double(), torch.tensor([p - n for p, n in expected], dtype=torch.float64))


def test_matcher_batched_equals_per_image() -> None:
    targets = random_targets([2, 0, 4, 1])
    outputs = random_outputs(4, 6)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=3.0, cost_giou=1.0)
    batched = matcher(outputs, targets)
    for image, target in enumerate(targets):
        single = matcher({k: v[image : image + 1] for k, v in outputs.items()}, [target])[0]
        assert torch.equal(batched[image][0], single[0]) and torch.equal(batched[image][1], single[1])


def test_matcher_with_no_targets_anywhere_returns_empty_indices() -> None:
    indices = HungarianMatcher()(random_outputs(2, 5), random_targets([0, 0]))
    assert all(len(p) == len(t) == 0 and p.dtype == torch.int64 for p, t in indices)


def test_matcher_cost_runs_in_fp32_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.dtype] = []
    original = matcher_module.generalized_box_iou

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        result = original(a, b)
        seen.extend([a.dtype, b.dtype, result.dtype])
        return result

    monkeypatch.setattr(matcher_module, "generalized_box_iou", spy)
    targets = random_targets([3, 2])
    outputs = random_outputs(2, 6)
    expected = HungarianMatcher()(outputs, targets)
    bf16_outputs = {k: v.bfloat16() for k, v in outputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = HungarianMatcher()(bf16_outputs, targets)
        crit_losses = SetCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets)
    assert seen and all(dtype == torch.float32 for dtype in seen)
    assert all(v.dtype == torch.float32 for v in crit_losses.values())
    reference = SetCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets)
    for key in reference:
        torch.testing.assert_close(crit_losses[key], reference[key])
    assert len(got) == len(expected)


# ---------------------------------------------------------------------- criterion
@pytest.mark.parametrize("eos_coef", [0.1, 0.5])
def test_every_loss_term_matches_the_float64_reference(eos_coef: float) -> None:
    targets = random_targets([3, 0, 4, 1])
    outputs = random_outputs(4, 6, aux_layers=2)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(), eos_coef=eos_coef)
    losses = criterion(outputs, targets, num_boxes=8.0)
    expected = ref_losses(outputs, targets, num_boxes=8.0, eos_coef=eos_coef)
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5, abs=1e-5), key


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 1.0)])
def test_sigmoid_focal_terms_match_the_float64_reference(alpha: float, gamma: float) -> None:
    torch.manual_seed(7)
    targets = random_targets([3, 0, 4, 1])
    outputs = random_outputs(4, 6, aux_layers=2, num_logits=NUM_CLASSES)
    losses = sigmoid_criterion(alpha, gamma)(outputs, targets, num_boxes=8.0)
    expected = ref_losses(outputs, targets, num_boxes=8.0, class_score="sigmoid", alpha=alpha, gamma=gamma)
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_sigmoid_losses_with_only_empty_targets_are_all_negatives() -> None:
    outputs = random_outputs(2, 5, num_logits=NUM_CLASSES)
    losses = sigmoid_criterion()(outputs, random_targets([0, 0]))
    expected = ref_losses(outputs, random_targets([0, 0]), num_boxes=1.0, class_score="sigmoid")
    assert losses["loss_ce"].item() == pytest.approx(expected["loss_ce"], rel=1e-5)
    assert losses["loss_bbox"].item() == 0.0 and losses["class_error"].item() == 100.0


def test_sigmoid_denoising_terms_leave_padding_slots_out() -> None:
    targets = random_targets([2, 0, 3])
    groups, group_size = 2, 3
    outputs = random_outputs(3, 5, num_logits=NUM_CLASSES)
    outputs["dn_outputs"] = random_outputs(3, groups * group_size, num_logits=NUM_CLASSES)
    outputs["dn_meta"] = {"num_groups": groups, "group_size": group_size}
    losses = sigmoid_criterion()(outputs, targets, num_boxes=5.0)
    focal = 0.0
    for image, target in enumerate(targets):
        for g in range(groups):
            for j, label in enumerate(target["labels"].tolist()):
                logits = outputs["dn_outputs"]["pred_logits"][image, g * group_size + j].double().tolist()
                focal += sum(ref_focal_terms(x, 0.25, 2.0)[0 if c == label else 1] for c, x in enumerate(logits))
    assert losses["loss_ce_dn"].item() == pytest.approx(focal / (5.0 * groups), rel=1e-5)


def test_criterion_and_matcher_must_read_the_same_class_scores() -> None:
    with pytest.raises(ValueError, match="sigmoid class scores but its matcher softmax"):
        SetCriterion(NUM_CLASSES, HungarianMatcher(), class_score="sigmoid")
    with pytest.raises(ValueError, match="class_score='logits' is not one of"):
        HungarianMatcher(class_score="logits")  # type: ignore[arg-type]


def test_losses_with_only_empty_targets() -> None:
    targets = random_targets([0, 0])
    outputs = random_outputs(2, 5, aux_layers=1)
    losses = SetCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets)
    expected = ref_losses(outputs, targets, num_boxes=1.0, eos_coef=0.1)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert losses["loss_bbox"].item() == 0.0 and losses["class_error"].item() == 100.0


def test_aux_layers_are_rematched_on_their_own_predictions() -> None:
    targets = random_targets([3, 2])
    outputs = random_outputs(2, 6)
    permutation = torch.randperm(6)
    # An aux layer that is the last layer with its queries shuffled: re-matching gives the same
    # losses; reusing the last layer's matching would not.
    outputs["aux_outputs"] = [{k: v[:, permutation] for k, v in outputs.items()}]
    losses = SetCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets)
    for name in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
        torch.testing.assert_close(losses[f"{name}_0"], losses[name])
    assert "class_error_0" not in losses


def test_aux_loss_off_ignores_aux_outputs() -> None:
    losses = SetCriterion(NUM_CLASSES, HungarianMatcher(), aux_loss=False)(random_outputs(2, 5, 3), random_targets([1, 2]))
    assert not any(key.endswith("_0") for key in losses)


def test_total_is_the_weighted_sum_of_weighted_keys() -> None:
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(), weight_dict={"loss_ce": 1.0, "loss_bbox": 5.0,
                                                                           "loss_giou": 2.0, "loss_ce_dn": 0.5})
    losses = criterion(random_outputs(2, 5, aux_layers=2), random_targets([2, 1]))
    expected = sum(losses[f"loss_ce{s}"] + 5 * losses[f"loss_bbox{s}"] + 2 * losses[f"loss_giou{s}"]
                   for s in ("", "_0", "_1"))
    torch.testing.assert_close(criterion.total(losses), expected)
    assert criterion.weight_of("cardinality_error") is None and criterion.weight_of("class_error") is None
    assert criterion.weight_of("loss_giou_dn_3") == 2.0 and criterion.weight_of("loss_ce_dn_0") == 0.5


def test_gradients_flow_to_logits_and_boxes() -> None:
    outputs = random_outputs(2, 5, aux_layers=1)
    tensors = [layer[key] for layer in [outputs] + outputs["aux_outputs"] for key in ("pred_logits", "pred_boxes")]
    for tensor in tensors:
        tensor.requires_grad_(True)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher())
    criterion.total(criterion(outputs, random_targets([2, 1]))).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tensors)


def test_num_boxes_is_divided_by_the_world_size_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    world_size = 4

    def all_reduce(tensor: torch.Tensor, *args, **kwargs) -> None:
        calls.append(tensor.item())
        tensor.mul_(world_size)  # four ranks with the same count: the sum is 4x

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world_size)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    targets = random_targets([3, 0, 2])
    assert global_num_boxes(targets, "cpu") == 5.0  # (4 * 5) / 4: divided once, not 5 / 4
    assert calls == [5.0]
    outputs = random_outputs(3, 5)
    distributed = SetCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets)
    assert len(calls) == 2  # one all-reduce per criterion call
    local = SetCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets, num_boxes=5.0)
    torch.testing.assert_close(distributed["loss_bbox"], local["loss_bbox"])
    assert global_num_boxes(random_targets([0, 0]), "cpu") == 1.0  # clamped


def test_degenerate_and_non_finite_boxes_name_the_image() -> None:
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher())
    targets = random_targets([2, 2])
    targets[1]["boxes"][1, 2] = -0.1
    with pytest.raises(ValueError, match=r"target boxes of image 1 \(image_id 11\) has a degenerate box at row 1"):
        criterion(random_outputs(2, 5), targets)
    outputs = random_outputs(2, 5)
    outputs["pred_boxes"][0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"pred_boxes of image 0 \(image_id 10\) has a non-finite box at row 3"):
        criterion(outputs, random_targets([2, 2]))
    outputs = random_outputs(2, 5, aux_layers=1)
    outputs["aux_outputs"][0]["pred_logits"][1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"pred_logits of image 1 \(image_id 11\) at decoder layer 0 hold NaN"):
        criterion(outputs, random_targets([2, 2]))
    zero_area = random_targets([1])
    zero_area[0]["boxes"][0, 3] = 0.0
    with pytest.raises(ValueError, match="width and height must be positive"):
        criterion(random_outputs(1, 5), zero_area)


def test_denoising_terms_use_the_fixed_matching() -> None:
    targets = random_targets([2, 0, 3])
    groups, group_size = 2, 3
    outputs = random_outputs(3, 5, aux_layers=1)
    outputs["dn_outputs"] = random_outputs(3, groups * group_size, aux_layers=1)
    outputs["dn_meta"] = {"num_groups": groups, "group_size": group_size}
    losses = SetCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets, num_boxes=5.0)
    indices = denoising_indices(targets, groups, group_size)
    assert indices[0][0].tolist() == [0, 1, 3, 4] and indices[0][1].tolist() == [0, 1, 0, 1]
    for suffix, layer in (("_dn", outputs["dn_outputs"]), ("_dn_0", outputs["dn_outputs"]["aux_outputs"][0])):
        nll, l1, giou, count = 0.0, 0.0, 0.0, 0
        for image, target in enumerate(targets):
            for g in range(groups):
                for j in range(len(target["labels"])):
                    q = g * group_size + j
                    logits = layer["pred_logits"][image, q].double()
                    nll += -logits.log_softmax(-1)[target["labels"][j]].item()
                    pred, tgt = layer["pred_boxes"][image, q].double().tolist(), target["boxes"][j].double().tolist()
                    l1 += sum(abs(p - t) for p, t in zip(pred, tgt, strict=True))
                    giou += 1 - ref_giou(pred, tgt)
                    count += 1
        assert losses[f"loss_ce{suffix}"].item() == pytest.approx(nll / count, rel=1e-5)
        assert losses[f"loss_bbox{suffix}"].item() == pytest.approx(l1 / (5.0 * groups), rel=1e-5)
        assert losses[f"loss_giou{suffix}"].item() == pytest.approx(giou / (5.0 * groups), rel=1e-5)


def test_encoder_proposal_terms_ignore_padding_cells() -> None:
    targets = random_targets([2, 3, 0])
    outputs = random_outputs(3, 4)
    outputs["enc_outputs"] = random_outputs(3, 9)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[0, 5:] = False  # padding cells: a bottom/right image edge in the flattened grid
    valid[1, 6:] = False
    outputs["enc_outputs"]["pred_valid"] = valid
    # Padding cells that would be the best match for every target, and are sure of a class:
    # they must neither be matched nor counted.
    outputs["enc_outputs"]["pred_boxes"][1, 6:9] = targets[1]["boxes"]
    outputs["enc_outputs"]["pred_logits"][1, 6:9] = 0.0
    outputs["enc_outputs"]["pred_logits"][1, 6:9, 0] = 50.0
    losses = SetCriterion(NUM_CLASSES, HungarianMatcher(), eos_coef=0.1)(outputs, targets, num_boxes=5.0)

    # Reference: brute-force matching over the valid cells only.
    ce_num = ce_den = l1 = giou = card = 0.0
    for image, target in enumerate(targets):
        keep = valid[image]
        logits = outputs["enc_outputs"]["pred_logits"][image][keep].double()
        boxes = outputs["enc_outputs"]["pred_boxes"][image][keep].double()
        _, assignment = brute_force_match(ref_cost(logits, boxes, target))
        log_prob = logits.log_softmax(-1)
        for q in range(len(logits)):
            cls = int(target["labels"][assignment[q]]) if q in assignment else NUM_CLASSES
            weight = 0.1 if cls == NUM_CLASSES else 1.0
            ce_num, ce_den = ce_num - weight * log_prob[q, cls].item(), ce_den + weight
            if q in assignment:
                pred, tgt = boxes[q].tolist(), target["boxes"][assignment[q]].double().tolist()
                l1 += sum(abs(p - g) for p, g in zip(pred, tgt, strict=True))
                giou += 1 - ref_giou(pred, tgt)
        card += abs(sum(int(int(row.argmax()) != NUM_CLASSES) for row in logits) - len(target["labels"])) / 3
    assert losses["loss_ce_enc"].item() == pytest.approx(ce_num / ce_den, rel=1e-5)
    assert losses["loss_bbox_enc"].item() == pytest.approx(l1 / 5.0, rel=1e-5)
    assert losses["loss_giou_enc"].item() == pytest.approx(giou / 5.0, rel=1e-5)
    assert losses["cardinality_error_enc"].item() == pytest.approx(card, rel=1e-5)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher())
    assert criterion.weight_of("loss_bbox_enc") == 5.0 and criterion.weight_of("cardinality_error_enc") is None


# ---------------------------------------------------------------------- post-processing
def test_postprocess_scores_labels_and_original_pixel_boxes() -> None:
    outputs = random_outputs(2, 4)
    outputs["pred_logits"][0, 0] = torch.tensor([0.0, 1.0, 0.0, 5.0])  # no-object wins: 2nd best reported
    results = PostProcess()(outputs, torch.tensor([[100, 200], [30, 40]]))
    assert len(results) == 2 and all(len(r["scores"]) == 4 for r in results)
    prob = outputs["pred_logits"][0, 0].softmax(-1)
    assert results[0]["labels"][0].item() == 1
    assert results[0]["scores"][0].item() == pytest.approx(prob[1].item())
    cx, cy, w, h = outputs["pred_boxes"][1, 2].tolist()
    expected = [(cx - w / 2) * 40, (cy - h / 2) * 30, (cx + w / 2) * 40, (cy + h / 2) * 30]
    torch.testing.assert_close(results[1]["boxes"][2], torch.tensor(expected))
    with pytest.raises(ValueError, match="orig_sizes must be"):
        PostProcess()(outputs, torch.tensor([100, 200]))


@pytest.mark.parametrize("top_k", [None, 4])
def test_postprocess_reads_sigmoid_scores_per_class(top_k: int | None) -> None:
    outputs = random_outputs(2, 5, num_logits=NUM_CLASSES)
    results = PostProcess(top_k=top_k, class_score="sigmoid")(outputs, torch.tensor([[100, 200], [30, 40]]))
    for image, result in enumerate(results):
        prob = outputs["pred_logits"][image].sigmoid()
        pairs = sorted(((prob[q, c].item(), q, c) for q in range(5) for c in range(NUM_CLASSES)), reverse=True)
        if top_k is None:  # one detection per query: its most probable class
            best = prob.max(-1)
            torch.testing.assert_close(result["scores"], best.values)
            assert result["labels"].tolist() == best.indices.tolist()
        else:
            torch.testing.assert_close(result["scores"], torch.tensor([p for p, _, _ in pairs[:top_k]]))
            assert result["labels"].tolist() == [c for _, _, c in pairs[:top_k]]


@pytest.mark.parametrize("top_k", [5, 200])
def test_postprocess_top_k_takes_the_best_query_class_pairs(top_k: int) -> None:
    """Against a sort of every (query, class) probability of each image, boxes carried along."""
    outputs = random_outputs(2, 6)
    orig_sizes = torch.tensor([[100, 200], [30, 40]])
    results = PostProcess(top_k=top_k)(outputs, orig_sizes)
    per_query = PostProcess()(outputs, orig_sizes)  # the same boxes in pixels, one per query
    for image, result in enumerate(results):
        prob = outputs["pred_logits"][image].softmax(-1)[:, :-1]
        pairs = sorted(((prob[q, c].item(), q, c) for q in range(6) for c in range(NUM_CLASSES)), reverse=True)
        expected = pairs[:top_k]  # top_k=200 > 6 * C: every pair once
        assert len(result["scores"]) == len(expected) == min(top_k, 6 * NUM_CLASSES)
        torch.testing.assert_close(result["scores"], torch.tensor([p for p, _, _ in expected]))
        assert result["labels"].tolist() == [c for _, _, c in expected]
        torch.testing.assert_close(result["boxes"], per_query[image]["boxes"][[q for _, q, _ in expected]])
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        PostProcess(top_k=0)
