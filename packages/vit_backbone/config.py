"""One typed description of the ViT backbone, and the one function that builds it.

Every task nests a `BackboneConfig` as ``model.backbone``, so the same keys reach the same
`VisionTransformer` argument in classification, detection and segmentation::

    model:
      backbone:
        preset: vit_base_patch16
        drop_path_rate: 0.1
        grad_checkpointing: true
        pretrained: weights/vit_base_patch16_224.safetensors

`build_backbone(config, num_classes=...)` turns it into a model and loads the pretrained
weights. Architecture fields left None take the preset's value; `img_size` and `in_chans`
left None are filled by the task from its data where it has such a value.

The checks in `__post_init__` raise ValueError messages that start with the field name, so
`vit_training.config.load_config` can prefix the dotted path (``model.backbone.depth=0 must
be >= 1``). This module imports no other project package; its choice checks are local.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from .conv_stem import conv_stem_error, conv_stem_stride
from .presets import create_vit, preset_config, preset_names
from .vit import VisionTransformer
from .weights import (
    LoadReport,
    convert_state_dict,
    hf_layer_norm_eps,
    load_pretrained,
    load_state_dict_file,
    resolve_checkpoint_path,
)

logger = logging.getLogger(__name__)

__all__ = ["BackboneConfig", "build_backbone", "build_backbone_with_report", "checkpoint_head_shape"]

GlobalPool = Literal["token", "avg", "none"]
PosEmbedKind = Literal["learn", "sincos1d", "sincos2d", "none"]
PosEmbedResampler = Literal["timm", "torchvision", "hf", "bilinear"]
AttnKernel = Literal["auto", "sdpa", "manual"]
WeightInit = Literal["timm", "jax", "jax_nlhb"]
PretrainedLayout = Literal["auto", "timm", "torchvision", "hf", "jax"]

# Fields that, when not None, override the preset's `VisionTransformer` argument of the same name.
_OPTIONAL_OVERRIDES = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
# Fields passed to `VisionTransformer` as they are (they have a value, never "the preset's").
_PLAIN_ARGUMENTS = (
    "qkv_bias", "qk_norm", "init_values", "class_token", "reg_tokens", "pos_embed", "no_embed_class",
    "pos_embed_resampler", "dynamic_img_pad", "global_pool", "fc_norm", "drop_rate", "pos_drop_rate",
    "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "attn_kernel", "norm_eps",
)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def _check_choices(config: Any) -> None:
    """Every `Literal[...]` field holds one of its choices (configs built in Python, not loaded)."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        choices = _literal_choices(hints[item.name])
        value = getattr(config, item.name)
        if choices is not None and value is not None and value not in choices:
            raise ValueError(f"{item.name}={value!r} is not one of {', '.join(map(str, choices))}")


def _hybrid_stride(layers: typing.Sequence[int]) -> int:
    """Total stride of a ResNetV2 with `layers` blocks per stage: a stride-4 stem, then x2 per later stage."""
    return 4 * 2 ** (len(layers) - 1)


@dataclass
class BackboneConfig:
    """The ViT backbone (`vit_backbone.VisionTransformer`) and its pretrained weights.

    Args:
        preset: a preset name (`vit_backbone.preset_names()`), e.g. ``vit_base_patch16``,
            ``vit_base_r50_s16`` (TransUNet's hybrid) or ``vit_micro_patch4_28``.
        img_size: side (int) or [height, width] the learned position embedding is stored for
            (other input sizes are resampled); None takes the task's input size, else the preset's.
        patch_size: patch side; None takes the preset's, or the stride of `conv_stem` /
            `hybrid_layers` when one is set (which it must then equal).
        in_chans: image channels; None takes the task's data channels, else the preset's.
        embed_dim: token width C; None takes the preset's.
        depth: number of blocks; None takes the preset's.
        num_heads: attention heads; None takes the preset's.
        mlp_ratio: MLP hidden width / C; None takes the preset's (4.0).
        qkv_bias: bias on the qkv projection.
        qk_norm: LayerNorm on queries and keys.
        init_values: LayerScale initial gain (DeiT-3, CaiT); None disables LayerScale.
        class_token: prepend a learned class token.
        reg_tokens: register tokens after the class token (Darcet et al. 2024); 0 for none.
        pos_embed: ``"learn"``, ``"sincos1d"``, ``"sincos2d"`` (fixed) or ``"none"``.
        no_embed_class: the learned position embedding covers the patches only (DeiT-3 layout).
        pos_embed_resampler: how learned position embeddings follow another grid
            (``"timm"``, ``"torchvision"``, ``"hf"``, ``"bilinear"``).
        dynamic_img_pad: zero-pad inputs whose sides are not multiples of the patch size.
        global_pool: ``"token"`` (class token), ``"avg"`` (mean of patch tokens) or ``"none"``;
            used by a classification head only.
        fc_norm: LayerNorm after pooling instead of before it (timm's layout for avg pooling; MAE
            fine-tuning). Changes the parameter names (`norm` -> `fc_norm`).
        drop_rate: dropout before the classification head.
        pos_drop_rate: dropout on the embedded tokens.
        proj_drop_rate: dropout after the attention projection and in the MLP.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last block (earlier blocks get linearly less).
        attn_kernel: ``"auto" | "sdpa" | "manual"`` attention implementation.
        weight_init: initialisation when training from scratch (``"timm"``, ``"jax"``,
            ``"jax_nlhb"``); with `pretrained` everything but a reset head is overwritten.
        norm_eps: LayerNorm epsilon.
        hybrid_layers: ResNetV2 blocks per CNN stage of a hybrid CNN + ViT (e.g. [3, 4, 9]); None
            takes the preset's (plain patches for a plain preset). The patch size is the CNN's stride.
        conv_stem: output channels of stride-2 3x3 convolutions that replace the patchify
            convolution (Xiao et al. 2021), e.g. [32, 64, 128] for stride 8; None for plain patches.
        grad_checkpointing: recompute block activations in the backward pass (less memory).
        pretrained: a local checkpoint file (.safetensors, .pth/.pt/.bin/.ckpt, JAX .npz) of a
            timm, torchvision, Hugging Face or JAX ViT, or a Hugging Face model folder
            (`save_pretrained`); None trains from scratch. A ``config.json`` beside the file (or
            in the folder) whose ``layer_norm_eps`` differs from `norm_eps` gets a warning.
        pretrained_layout: the checkpoint's layout, or ``"auto"`` to detect it.
        pretrained_strict: every model tensor must come from the checkpoint (except a reset head)
            and every checkpoint tensor must have a place; false for e.g. MAE checkpoints whose
            final `norm` becomes `fc_norm` in fine-tuning.
        pretrained_reset_head: None leaves out the checkpoint's classifier exactly when it does
            not fit the model's (always for a backbone without a head); True / False force it.
        pretrained_grid: [h, w] patch grid the checkpoint's position embedding was trained on,
            when it is not square; None infers a square grid.
    """

    preset: str = "vit_base_patch16"
    img_size: int | list[int] | None = None
    patch_size: int | None = None
    in_chans: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None
    class_token: bool = True
    reg_tokens: int = 0
    pos_embed: PosEmbedKind = "learn"
    no_embed_class: bool = False
    pos_embed_resampler: PosEmbedResampler = "timm"
    dynamic_img_pad: bool = False
    global_pool: GlobalPool = "token"
    fc_norm: bool = False
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    attn_kernel: AttnKernel = "auto"
    weight_init: WeightInit = "timm"
    norm_eps: float = 1e-6
    hybrid_layers: list[int] | None = None
    conv_stem: list[int] | None = None
    grad_checkpointing: bool = False
    pretrained: str | None = None
    pretrained_layout: PretrainedLayout = "auto"
    pretrained_strict: bool = True
    pretrained_reset_head: bool | None = None
    pretrained_grid: list[int] | None = None

    def __post_init__(self) -> None:
        _check_choices(self)
        _check(
            self.preset in preset_names(),
            f"preset={self.preset!r} is not a vit_backbone preset; choose one of: {', '.join(preset_names())}",
        )
        size = self.img_size
        _check(
            size is None or (isinstance(size, int) and size >= 1)
            or (not isinstance(size, int) and len(size) == 2 and min(size) >= 1),
            f"img_size={size} must be a side >= 1 or [height, width] (or null for the task's input size)",
        )
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name}={value} must be >= 1 (or null for the preset's)")
        _check(self.mlp_ratio is None or self.mlp_ratio > 0, f"mlp_ratio={self.mlp_ratio} must be > 0")
        _check(self.init_values is None or self.init_values > 0,
               f"init_values={self.init_values} must be > 0 (or null for no LayerScale)")
        _check(self.reg_tokens >= 0, f"reg_tokens={self.reg_tokens} must be >= 0")
        _check(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")
        for name in ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            _check(0 <= value < 1, f"{name}={value} must lie in [0, 1)")
        _check(
            self.global_pool != "token" or self.class_token,
            "global_pool='token' needs class_token=true; use global_pool='avg' without a class token",
        )
        _check(
            self.hybrid_layers is None or self.conv_stem is None,
            f"hybrid_layers={self.hybrid_layers} and conv_stem={self.conv_stem} both replace the patch "
            "embedding: set one of them",
        )
        if self.conv_stem is not None:
            problem = conv_stem_error(self.conv_stem, self.patch_size)
            _check(problem is None, str(problem))
        if self.hybrid_layers is not None:
            _check(
                len(self.hybrid_layers) >= 1 and min(self.hybrid_layers) >= 1,
                f"hybrid_layers={self.hybrid_layers} must list >= 1 blocks for each of >= 1 stages (or be null)",
            )
            stride = _hybrid_stride(self.hybrid_layers)
            _check(
                self.patch_size in (None, stride),
                f"patch_size={self.patch_size} must equal the stride {stride} of hybrid_layers="
                f"{self.hybrid_layers} (4 * 2 ** (stages - 1)), or be null to take it",
            )
        arch = self.architecture()
        _check(arch["embed_dim"] % arch["num_heads"] == 0,
               f"embed_dim={arch['embed_dim']} must be divisible by num_heads={arch['num_heads']}")
        if arch.get("hybrid_layers") is not None:
            stride = _hybrid_stride(arch["hybrid_layers"])
            _check(arch["patch_size"] == stride,
                   f"patch_size={arch['patch_size']} must equal the stride {stride} of preset {self.preset!r}'s "
                   "hybrid CNN, or be null to take it")
        if size is not None:  # a null size is the task's input size, filled in (and checked) later
            sides = (size, size) if isinstance(size, int) else tuple(size)
            _check(all(side % arch["patch_size"] == 0 for side in sides),
                   f"img_size={size} is not divisible by the patch size {arch['patch_size']}")
        grid = self.pretrained_grid
        _check(grid is None or (len(grid) == 2 and min(grid) >= 1),
               f"pretrained_grid={grid} must be [h, w] patches (or null for a square grid)")

    # ------------------------------------------------------------------------------ resolved values
    def architecture(self) -> dict[str, Any]:
        """The `VisionTransformer` keyword arguments of the preset with this config's overrides applied.

        Does not include `num_classes` or `weight_init` (`build_backbone` adds them).
        """
        kwargs = preset_config(self.preset)
        for name in _OPTIONAL_OVERRIDES:
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value if not isinstance(value, (list, tuple)) else tuple(int(v) for v in value)
        for name in _PLAIN_ARGUMENTS:
            kwargs[name] = getattr(self, name)
        if self.conv_stem is not None:
            kwargs["conv_stem"] = tuple(self.conv_stem)
            kwargs["hybrid_layers"] = None  # the stem replaces a hybrid preset's CNN too
            kwargs["patch_size"] = conv_stem_stride(self.conv_stem)
        elif self.hybrid_layers is not None:
            kwargs["hybrid_layers"] = tuple(self.hybrid_layers)
            kwargs["patch_size"] = _hybrid_stride(self.hybrid_layers)
        elif kwargs.get("hybrid_layers") is not None and self.patch_size is None:
            kwargs["patch_size"] = _hybrid_stride(kwargs["hybrid_layers"])
        return kwargs

    @property
    def resolved_patch_size(self) -> int:
        """The patch size the built backbone will have (the preset's, an override, or a CNN's stride)."""
        return int(self.architecture()["patch_size"])


# ---------------------------------------------------------------------------------------------- build
def checkpoint_head_shape(path: str | os.PathLike, model: VisionTransformer, layout: str = "auto"
                          ) -> tuple[int, ...] | None:
    """The shape of the checkpoint's classifier weight in our (timm) names, or None when it has no head.

    Converts the whole file (a torchvision, HF or JAX head has other names and layouts), so it
    reads the file once more than `load_pretrained` does; fine-tuning starts once per run.
    """
    converted = convert_state_dict(load_state_dict_file(path), model, layout=layout)
    head = converted.get("head.weight")
    return tuple(head.shape) if head is not None else None


def build_backbone(config: BackboneConfig, *, num_classes: int = 0, load_weights: bool = True,
                   config_key: str = "model.backbone") -> VisionTransformer:
    """The `VisionTransformer` of `config`, with `config.pretrained` loaded (see `build_backbone_with_report`)."""
    return build_backbone_with_report(config, num_classes=num_classes, load_weights=load_weights,
                                      config_key=config_key)[0]


def build_backbone_with_report(config: BackboneConfig, *, num_classes: int = 0, load_weights: bool = True,
                               config_key: str = "model.backbone"
                               ) -> tuple[VisionTransformer, LoadReport | None]:
    """Build the ViT of `config` and load its pretrained weights: the one place that does either.

    Args:
        config: the backbone section; None architecture fields take the preset's values (the
            task fills `img_size` and `in_chans` from its data first where it has them).
        num_classes: classes of the backbone's own linear head (classification); 0 builds no head,
            and a checkpoint's classifier is then left out.
        load_weights: load `config.pretrained` when it is set; False builds the architecture only
            (e.g. to load a trained ``model.safetensors`` into the whole model afterwards).
        config_key: the dotted path of `config` in the task's config, for error messages.

    Returns:
        (model on the CPU in fp32: images (B, in_chans, H, W) -> (B, num_classes) logits, or pooled
        (B, C) features without a head; what the checkpoint load did, or None without one).

    Raises:
        FileNotFoundError: `config.pretrained` names no file.
        ValueError: the checkpoint does not fit (one line naming the file and the first bad key).
    """
    pretrained = config.pretrained if load_weights else None
    kwargs = config.architecture()
    # A checkpoint overwrites every initialised tensor but a reset head: skip the init's cost.
    kwargs["weight_init"] = "skip" if pretrained else config.weight_init
    kwargs["num_classes"] = num_classes
    model = create_vit(config.preset, **kwargs)
    report = None
    if pretrained is not None:
        if not Path(pretrained).exists():
            raise FileNotFoundError(f"{config_key}.pretrained={pretrained!r}: no such file")
        path = resolve_checkpoint_path(pretrained)
        check_norm_eps(config, Path(pretrained), config_key)
        reset_head = config.pretrained_reset_head
        if reset_head is None:
            if num_classes == 0:
                reset_head = True  # no head to fill: the checkpoint's classifier (if any) is left out
            else:
                head_shape = checkpoint_head_shape(path, model, config.pretrained_layout)
                reset_head = head_shape != tuple(model.head.weight.shape)
                if reset_head:
                    found = "no head" if head_shape is None else f"a head of {head_shape[0]} classes"
                    logger.info("%s has %s; the model gets a new %d-class head", path, found, num_classes)
        if reset_head and num_classes > 0:
            # The head a checkpoint does not provide starts as timm's fine-tuning head does.
            model.reset_classifier(num_classes)
        grid = tuple(config.pretrained_grid) if config.pretrained_grid is not None else None
        report = load_pretrained(model, path, layout=config.pretrained_layout, strict=config.pretrained_strict,
                                 reset_head=reset_head, source_grid=grid)
        _log_report(path, report)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, report


def check_norm_eps(config: BackboneConfig, checkpoint: Path, config_key: str = "model.backbone") -> bool:
    """Warn (one line) when the checkpoint's Hugging Face ``config.json`` has another LayerNorm eps.

    The value is not adopted silently: the run's saved config is what ``evaluate`` and
    ``predict`` rebuild the model from, so the config itself must hold the eps the weights need.

    Returns:
        True when the values agree or the checkpoint does not say.
    """
    eps = hf_layer_norm_eps(checkpoint)
    if eps is None or math.isclose(eps, config.norm_eps, rel_tol=1e-6, abs_tol=0.0):
        return True
    logger.warning("%s: the checkpoint's config.json has layer_norm_eps=%g but %s.norm_eps=%g; outputs differ from the "
                   "checkpoint's; set %s.norm_eps=%g", checkpoint, eps, config_key, config.norm_eps, config_key, eps)
    return False


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
