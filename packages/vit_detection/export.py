"""The detector's export graph (`Detector.export`, ``vitasks detect export``): the network and ``predict``'s post-processing.

    images (B, 3, H, W) normalised, H and W multiples of the patch size p,
    orig_sizes (B, 2) int64 (height, width) of the original images
      -> scores (B, D), labels (B, D) int64, boxes (B, D, 4) (x0, y0, x1, y1) in the original pixels

D is ``eval.top_k`` (the best (query, class) pairs, sorted by score) or one per query
(``model.num_queries``), as `postprocess.PostProcess` gives them to ``predict``; nothing is
thresholded (``eval.score_threshold`` is in preprocessing.json). The batch and the image sides are
dynamic.

What the graph expects is what ``predict`` does to one image: resize (shorter side
``data.eval_size``, longer at most ``data.max_size``), normalise by mean/std, pad bottom/right with
zeros to a multiple of p. A batch holds images of one padded size, each padded by less than p
(no padding mask: images padded further would need one, which ``predict`` never does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_training.export import DynamicDim, GraphSpec, cpu_fp32_copy

from .postprocess import PostProcess

__all__ = ["DetectorGraph", "graph_spec"]


class DetectorGraph(nn.Module):
    """A `DETR` followed by `PostProcess.batched`: scored boxes in each image's pixels."""

    def __init__(self, model: nn.Module, postprocess: PostProcess) -> None:
        super().__init__()
        # The earlier decoder layers' outputs only feed the training loss: leave them out of the graph.
        model.aux_loss = False
        self.model = model
        self.postprocess = postprocess

    def forward(self, images: torch.Tensor,
                orig_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) and sizes (B, 2) -> scores (B, D), labels (B, D), boxes (B, D, 4)."""
        outputs = self.model(images)
        outputs = {key: outputs[key].float() for key in ("pred_logits", "pred_boxes")}
        return self.postprocess.batched(outputs, orig_sizes)


def graph_spec(model: nn.Module, config: Any, preprocessing: dict[str, Any]) -> GraphSpec:
    """The `GraphSpec` of a trained detector.

    Args:
        model: the `DETR` (`build_detector`), weights loaded.
        config: its resolved `DetectionConfig`.
        preprocessing: `Detector.preprocessing()`.
    """
    data = config.data
    patch = int(model.backbone.patch_size)
    postprocess = PostProcess(top_k=config.eval.top_k, class_score=config.model.class_score)
    # An example of the evaluation size, padded to the patch: long enough for two-stage's Q cells.
    height = -(-int(data.eval_size) // patch) * patch
    width = -(-max(int(data.eval_size), min(int(data.max_size), int(data.eval_size) * 4 // 3)) // patch) * patch
    example = (torch.randn(2, 3, height, width), torch.tensor([[height, width], [height - 1, width - 2]]))
    batch = DynamicDim("batch", 1, 1, 4096)
    return GraphSpec(
        module=DetectorGraph(cpu_fp32_copy(model), postprocess).eval(),
        example_inputs=example,
        input_names=["images", "orig_sizes"],
        output_names=["scores", "labels", "boxes"],
        dynamic={"images": {0: batch, 2: DynamicDim("height", patch, 2, 8192 // patch),
                            3: DynamicDim("width", patch, 2, 8192 // patch)},
                 "orig_sizes": {0: batch}},
        inputs={"images": f"float32 (batch, 3, height, width): RGB in [0, 1] resized (shorter side eval_size, longer "
                          f"at most max_size), normalised by mean/std, zero-padded bottom/right to a multiple of "
                          f"{patch} (by less than {patch} pixels)",
                "orig_sizes": "int64 (batch, 2): (height, width) of each original image, to scale the boxes to"},
        outputs={"scores": "float32 (batch, detections): sorted by score when top_k is set",
                 "labels": "int64 (batch, detections): index into class_names (category_ids gives the COCO id)",
                 "boxes": "float32 (batch, detections, 4): (x0, y0, x1, y1) in the original image's pixels"},
        preprocessing=preprocessing,
    )
