"""The classifier: a `vit_backbone` ViT with its own head, from scratch or from a checkpoint.

The head is the backbone's: class token (or mean of the patch tokens) -> norm -> linear. For
fine-tuning, a checkpoint of timm, torchvision, Hugging Face or JAX loads into every tensor it
has a place for; a head that does not fit the new class count is left out and the model keeps
its freshly initialised one (timm's ``pretrained=True, num_classes=N``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vit_backbone import (
    LoadReport,
    VisionTransformer,
    convert_state_dict,
    create_vit,
    load_pretrained,
    load_state_dict_file,
)
from vit_backbone.conv_stem import conv_stem_stride

from .config import ModelConfig

logger = logging.getLogger(__name__)

__all__ = ["build_classifier", "build_classifier_with_report", "checkpoint_head_shape"]


def _vit_kwargs(cfg: ModelConfig, weight_init: str) -> dict:
    """`create_vit` overrides: every field that is set, nothing that would shadow a preset value with None."""
    kwargs: dict = {
        "global_pool": cfg.global_pool,
        "fc_norm": cfg.fc_norm,
        "init_values": cfg.init_values,
        "drop_rate": cfg.drop_rate,
        "attn_drop_rate": cfg.attn_drop_rate,
        "drop_path_rate": cfg.drop_path_rate,
        "attn_kernel": cfg.attn_kernel,
        "weight_init": weight_init,
    }
    for name in ("num_classes", "in_chans", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio"):
        value = getattr(cfg, name)
        if value is not None:
            kwargs[name] = value
    if cfg.conv_stem is not None:
        kwargs["conv_stem"] = tuple(cfg.conv_stem)
        kwargs.setdefault("patch_size", conv_stem_stride(cfg.conv_stem))  # the stem's stride is the patch size
    return kwargs


def checkpoint_head_shape(path: str | os.PathLike, model: VisionTransformer, layout: str = "auto"
                          ) -> tuple[int, ...] | None:
    """The shape of the checkpoint's classifier weight in our (timm) names, or None when it has no head.

    Converts the whole file (a torchvision, HF or JAX head has other names and layouts), so it
    reads the file once more than `load_pretrained` does; fine-tuning starts once per run.
    """
    converted = convert_state_dict(load_state_dict_file(path), model, layout=layout)
    head = converted.get("head.weight")
    return tuple(head.shape) if head is not None else None


def build_classifier(cfg: ModelConfig, load_weights: bool = True) -> VisionTransformer:
    """Build the classifier of `cfg`: `create_vit(cfg.preset, ...)`, then the pretrained weights.

    Args:
        cfg: the model section. Architecture fields that are None take the preset's values
            (`ClassificationTask` fills `num_classes`, `in_chans` and `img_size` from the data first).
        load_weights: load `cfg.pretrained` when it is set; False builds the architecture only
            (e.g. to load a fine-tuned `model.safetensors` into it afterwards).

    Returns:
        a `VisionTransformer` on the CPU, in fp32, mapping images (B, in_chans, H, W) to logits
        (B, num_classes).

    Raises:
        FileNotFoundError: `cfg.pretrained` does not exist.
        ValueError: the checkpoint does not fit (one line naming the file and the first bad key).
    """
    return build_classifier_with_report(cfg, load_weights)[0]


def build_classifier_with_report(cfg: ModelConfig, load_weights: bool = True
                                 ) -> tuple[VisionTransformer, LoadReport | None]:
    """`build_classifier`, also returning what the checkpoint load did (None without `pretrained`)."""
    pretrained = cfg.pretrained if load_weights else None
    # A checkpoint overwrites every initialised tensor but a reset head: skip the init's cost (ViT-B: ~1 s).
    model = create_vit(cfg.preset, **_vit_kwargs(cfg, "skip" if pretrained else cfg.weight_init))
    if pretrained is None:
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model, None
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained={pretrained!r}: no such file")
    reset_head = cfg.pretrained_reset_head
    if reset_head is None:
        head_shape = checkpoint_head_shape(path, model, cfg.pretrained_layout)
        own_shape = tuple(model.head.weight.shape) if model.num_classes > 0 else None
        reset_head = head_shape != own_shape
        if reset_head:
            found = "no head" if head_shape is None else f"a head of {head_shape[0]} classes"
            logger.info("%s has %s; the model gets a new %d-class head", path, found, model.num_classes)
    if reset_head and model.num_classes > 0:
        # The head a checkpoint does not provide starts as timm's fine-tuning head does.
        model.reset_classifier(model.num_classes)
    report = load_pretrained(
        model, path, layout=cfg.pretrained_layout, strict=cfg.pretrained_strict, reset_head=reset_head
    )
    _log_report(path, report)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, report


def _log_report(path: Path, report: LoadReport) -> None:
    parts = [f"loaded {path} ({report.layout} layout)"]
    if report.head_reset:
        parts.append("head reset")
    if report.resampled_pos_embed:
        parts.append("position embedding resampled to the model's grid")
    if report.missing:
        parts.append(f"{len(report.missing)} model tensors not in the checkpoint: {', '.join(report.missing[:5])}")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} checkpoint tensors ignored: {', '.join(report.unexpected[:5])}")
    logger.info("; ".join(parts))
