"""The classifier: a `vit_backbone` ViT with its own head, from scratch or from a checkpoint.

The head is the backbone's: class token (or mean of the patch tokens) -> norm -> linear. For
fine-tuning, a checkpoint of timm, torchvision, Hugging Face or JAX loads into every tensor it
has a place for; a head that does not fit the new class count is left out and the model keeps
its freshly initialised one (timm's ``pretrained=True, num_classes=N``).
"""

from __future__ import annotations

from vit_backbone import LoadReport, VisionTransformer, build_backbone_with_report, checkpoint_head_shape
from vit_training.config import ConfigError

from .config import ModelConfig

__all__ = ["build_classifier", "build_classifier_with_report", "checkpoint_head_shape"]


def build_classifier(cfg: ModelConfig, load_weights: bool = True) -> VisionTransformer:
    """Build the classifier of `cfg`: `vit_backbone.build_backbone(cfg.backbone)` with a `num_classes` head.

    Args:
        cfg: the model section. Backbone architecture fields that are None take the preset's
            values (`ClassificationTask` fills `num_classes`, `backbone.in_chans` and
            `backbone.img_size` from the data first).
        load_weights: load `cfg.backbone.pretrained` when it is set; False builds the architecture
            only (e.g. to load a fine-tuned `model.safetensors` into it afterwards).

    Returns:
        a `VisionTransformer` on the CPU, in fp32, mapping images (B, in_chans, H, W) to logits
        (B, num_classes).

    Raises:
        FileNotFoundError: `cfg.backbone.pretrained` does not exist.
        ConfigError: `cfg.num_classes` is not set (a ValueError).
        ValueError: the checkpoint does not fit (one line naming
            the file and the first bad key).
    """
    return build_classifier_with_report(cfg, load_weights)[0]


def build_classifier_with_report(cfg: ModelConfig, load_weights: bool = True
                                 ) -> tuple[VisionTransformer, LoadReport | None]:
    """`build_classifier`, also returning what the checkpoint load did (None without `pretrained`)."""
    if cfg.num_classes is None:
        raise ConfigError("model.num_classes is not set (resolve the config against the data first)")
    return build_backbone_with_report(cfg.backbone, num_classes=cfg.num_classes, load_weights=load_weights)
