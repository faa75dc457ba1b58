"""The detector: a `vit_backbone` ViT (built by `vit_backbone.build_backbone`) under a DETR head.

    images (B, 3, H, W) -> ViT tokens -> neck -> DETR transformer -> class logits and boxes per query

The criterion (matcher + set loss) lives on the task, not in the model, so the model's state
dict is only the network and an exported ``model.safetensors`` loads into `build_detector`.
"""

from __future__ import annotations

import dataclasses

from vit_backbone import VisionTransformer
from vit_backbone import build_backbone as build_vit
from vit_training.config import ConfigError

from .config import ModelConfig
from .detr import DETR

__all__ = ["build_backbone", "build_detector"]


def build_backbone(cfg: ModelConfig, load_weights: bool = True) -> VisionTransformer:
    """The ViT of `cfg.backbone` without a classifier, `cfg.backbone.pretrained` loaded (its head dropped).

    A backbone whose `in_chans` is null takes 3: detection reads RGB images.
    """
    backbone = cfg.backbone
    if backbone.in_chans is None:
        backbone = dataclasses.replace(backbone, in_chans=3)
    return build_vit(backbone, num_classes=0, load_weights=load_weights)


def build_detector(cfg: ModelConfig, load_weights: bool = True) -> DETR:
    """The DETR of `cfg` on the CPU in fp32; `cfg.num_classes` must be set (`task.resolve_config`).

    Args:
        cfg: the model section.
        load_weights: load `cfg.backbone.pretrained` into the backbone; False builds the
            architecture only (to load a trained ``model.safetensors`` into it afterwards).

    Returns:
        a `DETR`: images (B, 3, H, W) and a padding mask (B, H, W) -> "pred_logits" (B, Q, C or
        C + 1) and "pred_boxes" (B, Q, 4) normalised cxcywh.
    """
    if cfg.num_classes is None:
        raise ConfigError("model.num_classes is not set (resolve the config against the data first)")
    return DETR(
        build_backbone(cfg, load_weights),
        num_classes=cfg.num_classes,
        neck=cfg.neck,
        hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries,
        enc_layers=cfg.enc_layers,
        dec_layers=cfg.dec_layers,
        nheads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        aux_loss=cfg.aux_loss,
        pre_norm=cfg.pre_norm,
        backbone_feature=cfg.backbone_feature,
        query_type=cfg.query_type,
        two_stage=cfg.two_stage,
        dn_groups=cfg.dn_groups,
        dn_label_noise=cfg.dn_label_noise,
        dn_box_noise=cfg.dn_box_noise,
        class_score=cfg.class_score,
    )
