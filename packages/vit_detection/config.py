"""The detection config: one dataclass schema, loaded with `vit_training.config.load_config`.

    config = load_config(DetectionConfig, "configs/detection/fashion_scenes_cpu.yaml",
                         ["train.epochs=2", "model.num_queries=50"])

Sections: `model` (`model.backbone`: the ViT and its weights; neck, DETR transformer, queries), `loss` (matching costs and
loss weights), `data` (COCO JSON + image folders, input sizes, augmentation), `eval` (COCOeval
and overlays) and the generic `optim`, `schedule` and `train` of `vit_training`.

`model.num_classes` is left None in files: `DetectionTask` takes it from the training
annotations' categories so the two cannot disagree. Range checks live in `__post_init__`; their
messages start with the field name, so a load error reads
``configs/x.yaml: model.num_queries=0 must be >= 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vit_backbone import BackboneConfig
from vit_training import OptimizerConfig, ScheduleConfig, TrainConfig, check_choices

from .scores import ClassScore

NeckKind = Literal["single", "simple_fpn"]
QueryKind = Literal["learned", "anchor"]
OnBadSample = Literal["error", "skip"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ModelConfig:
    """The detector: ViT backbone -> neck -> DETR transformer -> class and box heads.

    Args:
        backbone: the ViT and its pretrained weights (`vit_backbone.BackboneConfig`); its
            classifier is dropped. `img_size` is the side the learned position embedding is
            stored for (other input sizes are resampled per image, so padding never shifts an
            image's positions); `in_chans` is 3 (RGB images).
        num_classes: object classes (without "no object"); None takes the training
            annotations' category count.
        neck: ``"single"`` (1x1 projection of the stride-16 map, DETR's one level) or
            ``"simple_fpn"`` (ViTDet's pyramid: strides 8/16/32 from the one map).
        hidden_dim: transformer width.
        num_queries: object queries (predictions per image).
        enc_layers, dec_layers: transformer depth (encoder may be 0).
        num_heads: attention heads of the DETR transformer (the backbone's are `backbone.num_heads`).
        dim_feedforward: transformer MLP width.
        dropout: transformer dropout.
        pre_norm: pre-norm transformer layers (DETR's default is post-norm).
        aux_loss: losses on every decoder layer's predictions (DETR's default).
        query_type: ``"learned"`` (DETR's learned query embeddings) or ``"anchor"`` (DAB-DETR's
            learned 4-D anchor boxes refined layer by layer: converges much faster).
        two_stage: anchors and content of the Q queries from the Q best encoder-cell proposals
            (Deformable DETR two-stage / DINO query selection), trained with their own matched
            loss; the learned anchors are not used. Needs ``query_type: anchor``.
        dn_groups: groups of denoising queries (DN-DETR: noised copies of the ground-truth boxes
            and labels, reconstructed with their own loss; training only); 0 turns denoising
            off. Needs ``query_type: anchor``.
        dn_label_noise: probability that a denoising query's label is flipped.
        dn_box_noise: jitter of the denoising boxes, as a fraction of their width / height.
        backbone_feature: the backbone output the neck reads: ``"norm"`` (final tokens) or
            ``"blocks.N"`` (an earlier block; the later ones are dropped).
        class_score: ``"softmax"`` (DETR: C + 1 logits, the last "no object", cross-entropy with
            `loss.eos_coef`, matching cost -p) or ``"sigmoid"`` (Deformable DETR, DINO: C logits,
            one sigmoid per class, sigmoid focal loss and the focal matching cost; "no object" is
            every class's probability near 0).
    """

    backbone: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(preset="vit_tiny_patch16", img_size=224, in_chans=3)
    )
    num_classes: int | None = None
    neck: NeckKind = "single"
    hidden_dim: int = 256
    num_queries: int = 100
    enc_layers: int = 6
    dec_layers: int = 6
    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    aux_loss: bool = True
    query_type: QueryKind = "learned"
    two_stage: bool = False
    dn_groups: int = 0
    dn_label_noise: float = 0.2
    dn_box_noise: float = 0.4
    backbone_feature: str = "norm"
    class_score: ClassScore = "softmax"

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.num_classes is None or self.num_classes >= 1,
               f"num_classes={self.num_classes} must be >= 1 (or null for the data's category count)")
        _check(self.backbone.in_chans in (None, 3),
               f"backbone.in_chans={self.backbone.in_chans} must be 3 (detection reads RGB images)")
        for name in ("hidden_dim", "num_queries", "dec_layers", "num_heads", "dim_feedforward"):
            value = getattr(self, name)
            _check(value >= 1, f"{name}={value} must be >= 1")
        _check(self.enc_layers >= 0, f"enc_layers={self.enc_layers} must be >= 0")
        _check(self.hidden_dim % self.num_heads == 0,
               f"hidden_dim={self.hidden_dim} must be divisible by num_heads={self.num_heads}")
        _check(0 <= self.dropout < 1, f"dropout={self.dropout} must lie in [0, 1)")
        _check(self.dn_groups >= 0, f"dn_groups={self.dn_groups} must be >= 0")
        _check(
            self.dn_groups == 0 or self.query_type == "anchor",
            f"dn_groups={self.dn_groups} needs query_type='anchor' (denoising queries are noised boxes)",
        )
        _check(
            not self.two_stage or self.query_type == "anchor",
            "two_stage=true needs query_type='anchor' (the proposals become anchor boxes)",
        )
        _check(0 <= self.dn_label_noise <= 1, f"dn_label_noise={self.dn_label_noise} must lie in [0, 1]")
        _check(self.dn_box_noise >= 0, f"dn_box_noise={self.dn_box_noise} must be >= 0")
        _check(
            self.backbone_feature == "norm" or self.backbone_feature.startswith("blocks."),
            f"backbone_feature={self.backbone_feature!r} must be 'norm' or 'blocks.N'",
        )


@dataclass
class LossConfig:
    """Hungarian matching costs and set-loss weights (DETR: 1 / 5 / 2 and eos 0.1).

    Args:
        cost_class, cost_bbox, cost_giou: matching cost weights of the class cost (-p(class), or the
            focal cost with sigmoid scores), L1 and -GIoU.
        ce_weight, bbox_weight, giou_weight: loss weights of the class loss (cross-entropy, or the
            sigmoid focal loss), L1 and GIoU.
        eos_coef: relative weight of the "no object" class in the cross-entropy (softmax scores).
        focal_alpha, focal_gamma: the sigmoid focal loss's weight of positives and focusing
            exponent (Lin et al. 2017: 0.25 and 2), in the loss and the matching cost (sigmoid
            scores only).
    """

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    ce_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    eos_coef: float = 0.1
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        for name in ("cost_class", "cost_bbox", "cost_giou", "ce_weight", "bbox_weight", "giou_weight", "focal_gamma"):
            value = getattr(self, name)
            _check(value >= 0, f"{name}={value} must be >= 0")
        _check(0 < self.eos_coef <= 1, f"eos_coef={self.eos_coef} must lie in (0, 1]")
        _check(0 < self.focal_alpha < 1, f"focal_alpha={self.focal_alpha} must lie in (0, 1)")


@dataclass
class DetectionDataConfig:
    """COCO-format data (a JSON file + an image folder per split) and the input pipeline.

    Args:
        root: folder holding the splits; the paths below are relative to it unless absolute.
        train_images, train_annotations: the training image folder and its COCO JSON.
        val_images, val_annotations: the evaluation split; None (either) trains without evaluation.
        class_names: contiguous class names (label = index); None reads the training JSON's
            categories sorted by id. The saved run config holds them for `predict`.
        category_ids: the COCO category id of each label; None reads them like `class_names`.
        train_sizes: training short-side sizes, one drawn per image (DETR: 480..800).
        eval_size: evaluation / prediction short side (DETR: 800).
        max_size: longest side after resizing (DETR: 1333).
        hflip: horizontal flip probability.
        vflip: vertical flip probability (0 for natural images; aerial views have no "up").
        crop_prob: probability of a random crop that keeps at least one box whole (DETR: 0.5).
        crop_min_scale: smallest crop side as a fraction of the image side.
        min_visibility: a box keeping less than this fraction of its area after a crop is
            dropped (DETR keeps any remainder: 0).
        mean, std: per-channel normalisation of 0..1 RGB pixels (ImageNet's by default).
        pad_size_multiple: each batch's padded height and width are rounded up to a multiple of
            this (and of the backbone's patch size), so batches come in a few fixed shapes:
            cuDNN attention plans and compiled graphs are made per input shape, and DETR's
            multi-scale sizes otherwise give every batch a new one (COCO at batch 2: ~700 shapes
            an epoch at 16 px, ~55 at 128, ~20 at 256; each step of 128 pads ~12% more pixels on
            average). The padding is masked, so results do not depend on it. None pads to the
            patch size only (the fewest pixels; right for CPUs, which plan nothing per shape).
        num_train_samples, num_eval_samples: a fixed subset of the images (smoke tests); None for all.
        on_bad_sample: a training image that is missing, unreadable or not the JSON's size:
            ``"error"`` stops before the first step naming the file; ``"skip"`` leaves it out with
            a warning and lists it in ``skipped_samples.txt`` of the run folder. Evaluation images
            and boxes are always checked and never skipped.
    """

    root: str = "data/fashion_scenes"
    train_images: str = "train"
    train_annotations: str = "annotations/instances_train.json"
    val_images: str | None = "val"
    val_annotations: str | None = "annotations/instances_val.json"
    class_names: list[str] | None = None
    category_ids: list[int] | None = None
    train_sizes: list[int] = field(default_factory=lambda: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800])
    eval_size: int = 800
    max_size: int = 1333
    hflip: float = 0.5
    vflip: float = 0.0
    crop_prob: float = 0.5
    crop_min_scale: float = 0.6
    min_visibility: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    pad_size_multiple: int | None = None
    num_train_samples: int | None = None
    num_eval_samples: int | None = None
    on_bad_sample: OnBadSample = "error"

    def __post_init__(self) -> None:
        _check(len(self.train_sizes) >= 1 and min(self.train_sizes) >= 1,
               f"train_sizes={list(self.train_sizes)} must hold at least one positive size")
        _check(self.eval_size >= 1, f"eval_size={self.eval_size} must be >= 1")
        _check(self.max_size >= max(max(self.train_sizes), self.eval_size),
               f"max_size={self.max_size} must be >= every short side (train_sizes, eval_size)")
        _check(0 < self.crop_min_scale <= 1, f"crop_min_scale={self.crop_min_scale} must lie in (0, 1]")
        for name in ("hflip", "vflip", "crop_prob", "min_visibility"):
            value = getattr(self, name)
            _check(0 <= value <= 1, f"{name}={value} must lie in [0, 1]")
        for name in ("mean", "std"):
            _check(len(getattr(self, name)) == 3, f"{name}={getattr(self, name)} must hold 3 values (RGB)")
        _check(min(self.std) > 0, f"std={self.std} must be positive")
        _check((self.val_images is None) == (self.val_annotations is None),
               "val_images and val_annotations: set both (or neither, to train without evaluation)")
        _check(self.class_names is None or self.category_ids is None or len(self.class_names) == len(self.category_ids),
               f"class_names ({len(self.class_names or [])}) and category_ids ({len(self.category_ids or [])}) "
               f"must have the same length")
        for name in ("num_train_samples", "num_eval_samples"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name}={value} must be >= 1 (or null for all)")
        _check(self.pad_size_multiple is None or self.pad_size_multiple >= 1,
               f"pad_size_multiple={self.pad_size_multiple} must be a positive number of pixels "
               f"(or null to pad to the patch size only)")


@dataclass
class DetectionEvalConfig:
    """COCO evaluation and the pictures written after it.

    Args:
        max_dets: detections per image COCOeval keeps (its largest maxDets; above 10, as
            COCOeval also reports AR@1 and AR@10); raised to `model.num_queries` when smaller, so
            no prediction is dropped. The standard numbers at maxDets 100 are always reported;
            a different value adds the same numbers under ``...@maxDets<N>`` keys.
        overlay_images: images drawn with their predictions after each evaluation.
        score_threshold: the lowest score drawn on the overlays (display only: COCOeval always
            sees every prediction).
        top_k: null: one detection per query, its best class (DETR). k: the k most probable
            (query, class) pairs of each image (Deformable DETR), so a box whose class is
            uncertain is reported under each likely class; `max_dets` is raised to k.
    """

    max_dets: int = 100
    overlay_images: int = 4
    score_threshold: float = 0.5
    top_k: int | None = None

    def __post_init__(self) -> None:
        _check(self.max_dets > 10, f"max_dets={self.max_dets} must be > 10 (COCOeval reports AR@1 and AR@10 besides it)")
        _check(self.top_k is None or self.top_k >= 1, f"top_k={self.top_k} must be >= 1 (or null for one per query)")
        _check(self.overlay_images >= 0, f"overlay_images={self.overlay_images} must be >= 0")
        _check(0 <= self.score_threshold <= 1, f"score_threshold={self.score_threshold} must lie in [0, 1]")


@dataclass
class DetectionConfig:
    """Everything one detection run needs; saved as ``config.yaml`` beside its checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    eval: DetectionEvalConfig = field(default_factory=DetectionEvalConfig)
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4, weight_decay=1e-4,
                                                                           backbone_lr_scale=0.1))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(clip_grad_norm=0.1))
