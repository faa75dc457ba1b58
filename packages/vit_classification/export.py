"""The classifier's export graph (`Classifier.export`, ``vitasks classify export``).

    images (B, C, S, S), normalised as preprocessing.json says -> logits (B, K), probabilities (B, K)

`probabilities` is the softmax ``predict`` reports as scores (in fp32). The batch and the image
sides (multiples of the patch size) are dynamic: the position embedding is resampled to the token
grid inside the graph; ``predict`` always feeds ``data.input_size``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_training.export import DynamicDim, GraphSpec, cpu_fp32_copy

__all__ = ["ClassifierGraph", "graph_spec"]


class ClassifierGraph(nn.Module):
    """A classifier's logits and their softmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) -> logits (B, K) and probabilities (B, K), fp32."""
        logits = self.model(images).float()
        return logits, logits.softmax(dim=1)


def graph_spec(model: nn.Module, config: Any, preprocessing: dict[str, Any]) -> GraphSpec:
    """The `GraphSpec` of a trained classifier.

    Args:
        model: the network (`build_classifier`), weights loaded.
        config: its resolved `ClassificationConfig`.
        preprocessing: `Classifier.preprocessing()`.
    """
    data = config.data
    patch = int(model.patch_size)
    size = int(data.input_size)
    sides = {2: DynamicDim("height", patch, 1, 8192 // patch), 3: DynamicDim("width", patch, 1, 8192 // patch)}
    return GraphSpec(
        module=ClassifierGraph(cpu_fp32_copy(model)).eval(),
        example_inputs=(torch.randn(2, int(data.channels), size, size),),
        input_names=["images"],
        output_names=["logits", "probabilities"],
        dynamic={"images": {0: DynamicDim("batch", 1, 1, 4096), **(sides if size % patch == 0 else {})}},
        inputs={"images": f"float32 (batch, {data.channels}, height, width): the image resized and centre-cropped "
                          f"to {size} x {size} (crop_pct), scaled to [0, 1], normalised by mean/std"},
        outputs={"logits": "float32 (batch, classes)",
                 "probabilities": "float32 (batch, classes): softmax of the logits; index = class_names"},
        preprocessing=preprocessing,
    )
