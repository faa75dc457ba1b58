"""How class logits become class probabilities: DETR's softmax, or one sigmoid per class.

* ``"softmax"`` (DETR, Carion et al. 2020): C + 1 logits per prediction, the last "no object";
  the probabilities of the C real classes are ``softmax(logits)[..., :C]`` and sum to at most 1.
  Trained with cross-entropy, "no object" down-weighted by `eos_coef`.
* ``"sigmoid"`` (RetinaNet's focal loss, Lin et al. 2017; Deformable DETR, DINO): C logits, each
  class its own binary problem, ``sigmoid(logits)``; a prediction is "no object" when every
  class probability is low. Trained with the sigmoid focal loss, whose (1 - p)^gamma factor
  mutes the many easy negatives instead of a fixed `eos_coef`.

The choice changes the class head's width, the matching cost, the loss, the two-stage proposal
score and the post-processing; all of them read the probabilities through this module.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "CLASS_SCORES", "ClassScore", "check_class_score", "class_probabilities", "focal_matching_cost", "num_class_logits",
    "prior_bias",
]

ClassScore = Literal["softmax", "sigmoid"]
CLASS_SCORES: tuple[str, ...] = ("softmax", "sigmoid")


def check_class_score(class_score: str) -> None:
    """Raise a one-line ValueError unless `class_score` is one of `CLASS_SCORES`."""
    if class_score not in CLASS_SCORES:
        raise ValueError(f"class_score={class_score!r} is not one of {CLASS_SCORES}")


def num_class_logits(num_classes: int, class_score: ClassScore) -> int:
    """Width of the class head: C + 1 with softmax scores (the extra "no object"), C with sigmoid."""
    check_class_score(class_score)
    return num_classes + 1 if class_score == "softmax" else num_classes


def class_probabilities(logits: torch.Tensor, class_score: ClassScore) -> torch.Tensor:
    """(..., C + 1) softmax or (..., C) sigmoid logits -> (..., C) float32 real-class probabilities."""
    check_class_score(class_score)
    if class_score == "softmax":
        return logits.float().softmax(-1)[..., :-1]
    return logits.float().sigmoid()


def prior_bias(prior: float = 0.01) -> float:
    """The class-head bias that makes every sigmoid start at probability `prior`.

    RetinaNet's initialisation (Lin et al. 2017, sec. 4.1): with a bias of 0 every one of the many
    negatives starts at p = 0.5 and their loss swamps the first updates; log(prior / (1 - prior))
    starts them near "no object" (prior 0.01: bias -4.6).
    """
    return math.log(prior / (1.0 - prior))


def focal_matching_cost(logits: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """The class cost of matching a prediction to a target of class c under the sigmoid focal loss.

    Matching query i to target class c turns the focal loss of logit x = logits[i, c] from the
    negative term (1 - alpha) p^gamma (-log(1 - p)) into the positive term
    alpha (1 - p)^gamma (-log p), p = sigmoid(x); the cost is that change (Deformable DETR's
    matcher). -log p and -log(1 - p) are softplus(-x) and softplus(x), finite for any x.

    Args:
        logits: any shape, float32: the logits of the targets' classes.

    Returns:
        the cost, same shape.
    """
    prob = logits.sigmoid()
    positive = alpha * (1.0 - prob).pow(gamma) * F.softplus(-logits)
    negative = (1.0 - alpha) * prob.pow(gamma) * F.softplus(logits)
    return positive - negative
