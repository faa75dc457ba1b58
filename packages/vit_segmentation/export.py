"""The segmenter's export graph (`Segmenter.export`, ``vitasks segment export``): per-slice logits and labels.

    slices (B, C, H, W) in [0, 1], normalised as preprocessing.json says (modality), at data.input_size
      -> logits (B, K, H, W), labels (B, H, W) int64 (argmax over the K classes, 0 = background)

The volume side stays outside the graph: reading the NIfTI file, the modality's normalisation,
slicing along ``data.axis``, resizing each slice to ``data.input_size`` and the labels back to the
slice's size (``predict`` does these around the same network). The batch is dynamic; the slice
sides are fixed at ``data.input_size``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_training.export import DynamicDim, GraphSpec, cpu_fp32_copy

__all__ = ["SegmenterGraph", "graph_spec"]


class SegmenterGraph(nn.Module):
    """A `TransUNet`'s logits and their per-pixel argmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slices (B, C, H, W) -> logits (B, K, H, W) fp32 and labels (B, H, W) int64."""
        logits = self.model(slices).float()
        return logits, logits.argmax(dim=1)


def graph_spec(model: nn.Module, config: Any, preprocessing: dict[str, Any]) -> GraphSpec:
    """The `GraphSpec` of a trained segmenter.

    Args:
        model: the `TransUNet` (`build_transunet`), weights loaded.
        config: its resolved `SegmentationConfig`.
        preprocessing: `Segmenter.preprocessing()`.
    """
    data = config.data
    height, width = (int(side) for side in data.input_size)
    channels = data.input_channels  # the modalities (else one grey channel), each with its 2k + 1 slices
    return GraphSpec(
        module=SegmenterGraph(cpu_fp32_copy(model)).eval(),
        example_inputs=(torch.rand(2, channels, height, width),),
        input_names=["slices"],
        output_names=["logits", "labels"],
        # The slice sides stay at data.input_size (what predict feeds): a hybrid backbone's CNN stem
        # computes its sizes in ops a saved .pt2 cannot hold symbolically.
        dynamic={"slices": {0: DynamicDim("batch", 1, 1, 4096)}},
        inputs={"slices": f"float32 (batch, {channels}, height, width): slices normalised to [0, 1] "
                          f"(modality), resized to input_size {height} x {width}"
                          + (f"; each channel's slices z-{data.context_slices} .. z+{data.context_slices} in turn"
                             if data.context_slices else "")},
        outputs={"logits": "float32 (batch, classes, height, width)",
                 "labels": "int64 (batch, height, width): class index per pixel, 0 = background"},
        preprocessing=preprocessing,
    )
