"""Import ViT weights from local checkpoint files of timm, torchvision, Hugging Face or JAX.

Our parameter names are timm's `VisionTransformer` names, so a timm checkpoint loads as it is;
every other layout is renamed (and, for JAX, transposed) into those names by one small function
per layout. The tensors themselves are plain copies except where noted:

* torchvision `vit_b_16` family: `in_proj_weight` is already timm's fused [q; k; v] `qkv`.
* Hugging Face ViT: separate query / key / value Linears (D, D) are stacked into `qkv` (3D, D).
  Two key layouts exist: the hub / `save_pretrained` files (`encoder.layer.N.attention.attention.query`,
  transformers v4 names) and the in-memory `state_dict()` of transformers v5
  (`layers.N.attention.q_proj`, `mlp.fc1`, ...). Both load, with or without the `vit.` prefix.
* JAX `.npz` of google-research/vision_transformer: kernels are stored input-first (Dense
  `(in, out)`, Conv `HWIO`) and attention per head (`query/kernel` `(D, heads, head_dim)`,
  `out/kernel` `(heads, head_dim, D)`); they are reshaped and transposed into PyTorch's
  `(out, in)` / `OIHW`. The `R50+ViT-B_16` hybrid adds its ResNetV2 (`conv_root`, `gn_root`,
  `block{S}/unit{U}/...`).

Learned position embeddings are resampled at load time when the checkpoint's grid differs
from the model's (`pos_embed.resample_pos_embed` with the model's resampler). Keys a layout
does not know are passed through under their own name, so a strict load names them.

Typical use::

    model = create_vit("vit_base_patch16", num_classes=10, weight_init="skip")
    report = load_pretrained(model, "vit_b_16.pth", reset_head=True)
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .pos_embed import resample_pos_embed
from .vit import VisionTransformer

logger = logging.getLogger(__name__)

Layout = Literal["timm", "torchvision", "hf", "jax"]
LayoutArg = Literal["auto", "timm", "torchvision", "hf", "jax"]
LAYOUTS: tuple[str, ...] = ("timm", "torchvision", "hf", "jax")

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SUFFIXES = (".safetensors", *TORCH_SUFFIXES, ".npz")
# Training scripts wrap the weights; the first of these found (holding a mapping) is used.
CONTAINER_KEYS = ("state_dict", "model", "model_state", "module", "model_ema")
# DistributedDataParallel adds `module.`, torch.compile `_orig_mod.`.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

StateDict = dict[str, torch.Tensor]
RawStateDict = Mapping[str, "torch.Tensor | np.ndarray"]


@dataclass
class LoadReport:
    """What `load_pretrained` did.

    Attributes:
        layout: the checkpoint layout that was converted ("timm", "torchvision", "hf", "jax").
        missing: model keys the checkpoint did not provide (left as they were).
        unexpected: converted checkpoint keys the model has no place for (ignored).
        resampled_pos_embed: the position embedding was resampled to the model's grid.
        head_reset: `head.*` was not loaded (the model keeps its own head).
        notes: checkpoint tensors dropped on purpose (poolers, pre-logits, mask tokens), one line each.
    """

    layout: Layout
    missing: list[str]
    unexpected: list[str]
    resampled_pos_embed: bool
    head_reset: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class _Converted:
    state_dict: StateDict
    layout: Layout
    resampled_pos_embed: bool
    notes: list[str]


# ---------------------------------------------------------------------------------------- files
def _one_line(error: BaseException) -> str:
    """The informative line of a library error, for a one-line message of our own."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).strip().splitlines()]
    # torch's weights_only refusal puts the reason (e.g. "Unsupported global: GLOBAL
    # argparse.Namespace", training-script args saved beside the weights) on a later line.
    reason = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    return f"{type(error).__name__}: {reason.split('. ')[0]}"[:300]


def _unwrap(checkpoint: object, path: Path) -> StateDict:
    """Descend into training-script containers, strip wrapper prefixes, check it is all tensors."""
    while isinstance(checkpoint, Mapping):
        inner = next((checkpoint[k] for k in CONTAINER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
        if inner is None:
            break
        checkpoint = inner
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(checkpoint).__name__}"
        )
    state_dict: StateDict = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path}: expected a state dict of tensors, but entry {key!r} is a {type(value).__name__}"
            )
        name = str(key)
        stripped = True
        while stripped:  # `module._orig_mod.x` (DDP around a compiled model) loses both
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        state_dict[name] = value
    return state_dict


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor | np.ndarray]:
    """Read a checkpoint file into a flat name -> tensor (or array) dict, on the CPU.

    * ``.safetensors``: `safetensors.torch.load_file`.
    * ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: `torch.load(weights_only=True)` (no arbitrary
      code runs); containers `state_dict` / `model` / `model_state` / `module` / `model_ema`
      are unwrapped and `module.` / `_orig_mod.` prefixes stripped.
    * ``.npz``: the raw JAX arrays under their JAX names (`embedding/kernel`, ...), unconverted.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: an unknown suffix, or a file that cannot be read as that format (one line).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; pass the weights file inside it (e.g. model.safetensors)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{path}: not a readable .safetensors file ({_one_line(error)})") from error
    if suffix in TORCH_SUFFIXES:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and weights_only errors all mean "not a state dict"
            raise ValueError(
                f"{path}: not a readable PyTorch checkpoint (expected a torch.save'd state dict; {_one_line(error)})"
            ) from error
        return dict(_unwrap(checkpoint, path))  # widen the value type for the caller
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except Exception as error:  # BadZipFile, OSError, ValueError for pickled members
            raise ValueError(f"{path}: not a readable JAX .npz archive ({_one_line(error)})") from error
    raise ValueError(f"{path}: unsupported checkpoint suffix {suffix!r}; expected one of {', '.join(SUFFIXES)}")


# Weight files of a Hugging Face model folder (`save_pretrained`), in the order looked for.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """The weights file of `path`: `path` itself, or the weights in a Hugging Face model folder.

    Raises:
        FileNotFoundError: nothing at `path`, or a folder without ``model.safetensors`` /
            ``pytorch_model.bin`` (one line naming it).
    """
    path = Path(path)
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: a folder without a weights file ({' or '.join(HF_WEIGHT_FILES)})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return path


def hf_layer_norm_eps(path: str | os.PathLike) -> float | None:
    """The ``layer_norm_eps`` of the Hugging Face ``config.json`` beside a checkpoint file (or in its folder).

    Hugging Face ViTs use 1e-12 where timm, torchvision and JAX use 1e-6; the difference moves
    a ViT-B's outputs by ~1e-4, so the model must be built with the checkpoint's value.

    Returns:
        the value, or None when there is no readable ``config.json`` or it has no ``layer_norm_eps``.
    """
    import json

    path = Path(path)
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    try:
        value = json.loads(config_file.read_text()).get("layer_norm_eps")
    except (OSError, ValueError, AttributeError):  # missing, not JSON, or not an object
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------- layout
def _strip_jax_prefix(key: str) -> str:
    # Checkpoints saved with the optimizer state keep the parameters under `opt/target/`.
    return key[len("opt/target/") :] if key.startswith("opt/target/") else key


def detect_layout(state_dict: RawStateDict) -> Layout:
    """Tell which library wrote `state_dict`: "timm", "torchvision", "hf" or "jax".

    Decided by anchor keys: JAX names contain "/" (`embedding/kernel`), torchvision has
    `conv_proj.weight` / `class_token`, Hugging Face `embeddings.patch_embeddings.projection.weight`
    (optionally under `vit.`), timm `patch_embed.proj.weight` (a hybrid: `patch_embed.backbone.*`).

    Raises:
        ValueError: no anchor matches; the message lists a few of the keys found.
    """
    keys = list(state_dict)
    jax_anchors = ("embedding/kernel", "conv_root/kernel")
    if any(_strip_jax_prefix(k) in jax_anchors or _strip_jax_prefix(k).startswith("Transformer/") for k in keys):
        return "jax"
    if "conv_proj.weight" in state_dict or "class_token" in state_dict or "encoder.pos_embedding" in state_dict:
        return "torchvision"
    if any(k.removeprefix("vit.").startswith("embeddings.patch_embeddings.") for k in keys):
        return "hf"
    if any(k.startswith(("patch_embed.proj.", "patch_embed.backbone.")) for k in keys) or "pos_embed" in state_dict:
        return "timm"
    shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    raise ValueError(
        f"cannot tell the checkpoint layout: none of the timm (patch_embed.proj.weight), torchvision "
        f"(conv_proj.weight), Hugging Face (embeddings.patch_embeddings.projection.weight) or JAX "
        f"(embedding/kernel) ViT anchor keys is present; its {len(keys)} keys start: {shown}"
    )


# ---------------------------------------------------------------------------------------- converters
def _as_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.ascontiguousarray(value))


def _fuse_qkv(state_dict: StateDict) -> None:
    """Replace `blocks.N.attn.{q,k,v}.{weight,bias}` by timm's stacked `blocks.N.attn.qkv.*`, in place.

    q, k, v weights (D, D) -> qkv (3D, D); biases (D,) -> (3D,). The order [q; k; v] is what
    timm's Attention splits. A triple with a member missing is left alone (it shows as unexpected).
    """
    pattern = re.compile(r"^(blocks\.\d+\.attn)\.q\.(weight|bias)$")
    for key in [k for k in state_dict if pattern.match(k)]:
        module, kind = pattern.match(key).groups()
        parts = [f"{module}.{name}.{kind}" for name in ("q", "k", "v")]
        if all(part in state_dict for part in parts):
            state_dict[f"{module}.qkv.{kind}"] = torch.cat([state_dict.pop(part) for part in parts], dim=0)


def _convert_timm(state_dict: RawStateDict) -> tuple[StateDict, list[str]]:
    """timm names are ours; only drop the old `pre_logits.fc` representation layer."""
    out: StateDict = {}
    notes: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("pre_logits."):
            notes.append(f"dropped {key}: the representation layer is not part of this model (timm drops it too)")
            continue
        out[key] = _as_tensor(value)
    return out, notes


# torchvision EncoderBlock module -> timm Block module (after `encoder.layers.encoder_layer_N.`).
_TORCHVISION_BLOCK = {
    "ln_1": "norm1",
    "self_attention.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
    # torchvision < 0.13 named the MLP Linears linear_1 / linear_2 (torchvision PR #6053).
    "mlp.linear_1": "mlp.fc1",
    "mlp.linear_2": "mlp.fc2",
}
_TORCHVISION_TOP = {
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
}


def _convert_torchvision(state_dict: RawStateDict) -> tuple[StateDict, list[str]]:
    """torchvision `VisionTransformer` (vit_b_16, ...) -> timm names; every tensor is a plain copy.

    `self_attention.in_proj_weight` (3D, D) already stacks [q; k; v] like timm's `qkv`.
    """
    out: StateDict = {}
    notes: list[str] = []
    block = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)\.(weight|bias)$")
    in_proj = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$")
    for key, value in state_dict.items():
        tensor = _as_tensor(value)
        if key in _TORCHVISION_TOP:
            out[_TORCHVISION_TOP[key]] = tensor
        elif match := in_proj.match(key):
            out[f"blocks.{match[1]}.attn.qkv.{match[2]}"] = tensor
        elif (match := block.match(key)) and match[2] in _TORCHVISION_BLOCK:
            out[f"blocks.{match[1]}.{_TORCHVISION_BLOCK[match[2]]}.{match[3]}"] = tensor
        elif key.startswith("heads.pre_logits."):
            # Present when built with representation_size; timm's filter drops it as well.
            notes.append(f"dropped {key}: the pre-logits layer has no place in this model")
        else:
            out[key] = tensor  # unknown: surfaces as unexpected
    return out, notes


# Hugging Face ViTLayer module -> timm Block module, v4 (hub files) and v5 (in-memory) names.
_HF_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    # v4 / save_pretrained
    "attention.attention.query": "attn.q",
    "attention.attention.key": "attn.k",
    "attention.attention.value": "attn.v",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    # v5 state_dict()
    "attention.q_proj": "attn.q",
    "attention.k_proj": "attn.k",
    "attention.v_proj": "attn.v",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def _convert_hf(state_dict: RawStateDict) -> tuple[StateDict, list[str]]:
    """Hugging Face `ViTModel` / `ViTForImageClassification` -> timm names.

    `vit.` (the ForImageClassification wrapper) is optional. query/key/value (D, D) each are
    stacked into `qkv` (3D, D). The pooler (dense + tanh on the class token, unused by the
    classifier) and a mask token (masked image modelling only) are dropped with a note.
    """
    out: StateDict = {}
    notes: list[str] = []
    block = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state_dict.items():
        tensor = _as_tensor(value)
        name = key.removeprefix("vit.")
        if name in _HF_TOP:
            out[_HF_TOP[name]] = tensor
        elif (match := block.match(name)) and match[2] in _HF_BLOCK:
            out[f"blocks.{match[1]}.{_HF_BLOCK[match[2]]}.{match[3]}"] = tensor
        elif name.startswith("pooler."):
            notes.append(f"dropped {key}: the HF pooler is not used by a class-token head")
        elif name == "embeddings.mask_token":
            notes.append(f"dropped {key}: the mask token is only for masked image modelling")
        else:
            out[key] = tensor
    _fuse_qkv(out)
    return out, notes


def _jax_dense(kernel: torch.Tensor) -> torch.Tensor:
    """Dense kernel (in, out) -> Linear weight (out, in)."""
    return kernel.T.contiguous()


def _jax_conv(kernel: torch.Tensor) -> torch.Tensor:
    """Conv kernel (H, W, in, out) -> Conv2d weight (out, in, H, W)."""
    return kernel.permute(3, 2, 0, 1).contiguous()


def _jax_vector(value: torch.Tensor) -> torch.Tensor:
    # GroupNorm / LayerNorm scales are (C,) in flax, (1, 1, 1, C) in some older exports.
    return value.reshape(-1)


def _jax_block_key(rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """One `Transformer/encoderblock_N/` sub-key -> (timm sub-key under `blocks.N.`, tensor)."""
    norms = {"LayerNorm_0": "norm1", "LayerNorm_2": "norm2"}
    module, _, param = rest.rpartition("/")
    if module in norms:
        return f"{norms[module]}.{'weight' if param == 'scale' else 'bias'}", _jax_vector(value)
    attention = "MultiHeadDotProductAttention_1/"
    if module.startswith(attention):
        part = module[len(attention) :]
        if part in ("query", "key", "value"):
            short = part[0]  # q / k / v, fused into qkv afterwards
            if param == "kernel":  # (D, heads, head_dim) -> (heads*head_dim, D)
                return f"attn.{short}.weight", value.reshape(value.shape[0], -1).T.contiguous()
            return f"attn.{short}.bias", value.reshape(-1)  # (heads, head_dim) -> (D,)
        if part == "out":
            if param == "kernel":  # (heads, head_dim, D) -> (D, heads*head_dim)
                return "attn.proj.weight", value.reshape(-1, value.shape[-1]).T.contiguous()
            return "attn.proj.bias", value
    mlp = {"MlpBlock_3/Dense_0": "mlp.fc1", "MlpBlock_3/Dense_1": "mlp.fc2"}
    if module in mlp:
        return f"{mlp[module]}.{'weight' if param == 'kernel' else 'bias'}", (
            _jax_dense(value) if param == "kernel" else value
        )
    return None


def _jax_resnet_key(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """A ResNetV2 key of the R50+ViT hybrid -> (our name, tensor), or None if it is not one.

    `conv_root` / `gn_root` are the stem; `block{S}/unit{U}/{conv,gn}{1,2,3}` the bottlenecks
    (1-based in JAX, 0-based in timm), `conv_proj` / `gn_proj` the downsampling shortcut.
    """
    backbone = "patch_embed.backbone"
    if key == "conv_root/kernel":
        return f"{backbone}.stem.conv.weight", _jax_conv(value)
    if key in ("gn_root/scale", "gn_root/bias"):
        return f"{backbone}.stem.norm.{'weight' if key.endswith('scale') else 'bias'}", _jax_vector(value)
    match = re.match(r"^block(\d+)/unit(\d+)/(conv|gn)(1|2|3|_proj)/(kernel|scale|bias)$", key)
    if match is None:
        return None
    stage, unit, kind, which, param = match.groups()
    prefix = f"{backbone}.stages.{int(stage) - 1}.blocks.{int(unit) - 1}"
    if which == "_proj":
        module = f"downsample.{'conv' if kind == 'conv' else 'norm'}"
    else:
        module = f"{kind if kind == 'conv' else 'norm'}{which}"
    if kind == "conv":
        return f"{prefix}.{module}.weight", _jax_conv(value)
    return f"{prefix}.{module}.{'weight' if param == 'scale' else 'bias'}", _jax_vector(value)


def _convert_jax(state_dict: RawStateDict) -> tuple[StateDict, list[str]]:
    """Original google-research ViT `.npz` (and the R50+ViT hybrid) -> timm names and layouts.

    Follows the transposes of timm's `vision_transformer._load_weights`: conv kernels HWIO ->
    OIHW, Dense kernels transposed, per-head attention kernels flattened; q/k/v are then fused.
    """
    out: StateDict = {}
    notes: list[str] = []
    block = re.compile(r"^Transformer/encoderblock_(\d+)/(.+)$")
    for raw_key, raw_value in state_dict.items():
        key = _strip_jax_prefix(raw_key)
        value = _as_tensor(raw_value)
        converted: tuple[str, torch.Tensor] | None = None
        if key == "embedding/kernel":  # the patch conv (plain) or the 1x1 projection (hybrid)
            converted = "patch_embed.proj.weight", _jax_conv(value)
        elif key == "embedding/bias":
            converted = "patch_embed.proj.bias", value
        elif key == "cls":
            converted = "cls_token", value  # (1, 1, D) in both
        elif key == "Transformer/posembed_input/pos_embedding":
            converted = "pos_embed", value  # (1, 1 + h*w, D) in both
        elif key in ("Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"):
            converted = f"norm.{'weight' if key.endswith('scale') else 'bias'}", value
        elif key == "head/kernel":
            converted = "head.weight", _jax_dense(value)
        elif key == "head/bias":
            converted = "head.bias", value
        elif key.startswith("pre_logits/"):
            notes.append(f"dropped {raw_key}: the representation layer is not part of this model (timm drops it too)")
            continue
        elif match := block.match(key):
            sub = _jax_block_key(match[2], value)
            converted = None if sub is None else (f"blocks.{match[1]}.{sub[0]}", sub[1])
        else:
            converted = _jax_resnet_key(key, value)
        if converted is None:
            out[raw_key] = value  # unknown: surfaces as unexpected under its JAX name
        else:
            out[converted[0]] = converted[1]
    _fuse_qkv(out)
    return out, notes


# ---------------------------------------------------------------------------------------- model fit
def _check_patch_kernel(state_dict: StateDict, model: VisionTransformer) -> None:
    """A different patch size changes what every token means: refuse rather than resample the kernel."""
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        return
    expected = tuple(model.patch_embed.proj.weight.shape[-2:])
    if tuple(weight.shape[-2:]) != expected:
        raise ValueError(
            f"patch embedding kernel is {weight.shape[-2]}x{weight.shape[-1]} in the checkpoint but "
            f"{expected[0]}x{expected[1]} in the model; build the model with the checkpoint's patch size "
            f"(kernels are not resampled; a plain ViT checkpoint for a hybrid model, or the reverse, also ends here)"
        )


def _fit_pos_embed(
    pos_embed: torch.Tensor, model: VisionTransformer, source_grid: tuple[int, int] | None
) -> tuple[torch.Tensor, bool]:
    """Resample a checkpoint position embedding (1, P + h*w, C) to the model's grid.

    Returns the embedding for `model.grid_size` and whether it was resampled.
    """
    if model.pos_embed is None:
        return pos_embed, False  # fixed or no position embedding: the key shows as unexpected
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    if source_grid is None:
        if pos_embed.ndim != 3 or pos_embed.shape[1] == model.pos_embed.shape[1]:
            return pos_embed, False
        grid_rows = pos_embed.shape[1] - prefix
        # Checkpoints do not store their grid: a square one is the only guess that is always right
        # for the published weights, and anything else must be said by the caller.
        side = math.isqrt(max(grid_rows, 0))
        if side * side != grid_rows:
            raise ValueError(
                f"the checkpoint's position embedding has {grid_rows} grid rows (+{prefix} prefix), "
                f"which is not a square grid; pass source_grid=(h, w)"
            )
        source_grid = (side, side)
    source_grid = (int(source_grid[0]), int(source_grid[1]))
    if source_grid == tuple(model.grid_size):
        return pos_embed, False
    resampled = resample_pos_embed(
        pos_embed, source_grid, model.grid_size, num_prefix_tokens=prefix, resampler=model.pos_embed_resampler
    )
    return resampled, True


def _convert(
    state_dict: RawStateDict,
    model: VisionTransformer,
    layout: LayoutArg,
    source_grid: tuple[int, int] | None,
) -> _Converted:
    if layout == "auto":
        layout = detect_layout(state_dict)
    if layout == "timm":
        converted, notes = _convert_timm(state_dict)
    elif layout == "torchvision":
        converted, notes = _convert_torchvision(state_dict)
    elif layout == "hf":
        converted, notes = _convert_hf(state_dict)
    elif layout == "jax":
        converted, notes = _convert_jax(state_dict)
    else:
        raise ValueError(f"layout={layout!r} is not one of {('auto', *LAYOUTS)}")
    _check_patch_kernel(converted, model)
    resampled = False
    if "pos_embed" in converted:
        converted["pos_embed"], resampled = _fit_pos_embed(converted["pos_embed"], model, source_grid)
    return _Converted(converted, layout, resampled, notes)


def convert_state_dict(
    state_dict: RawStateDict,
    model: VisionTransformer,
    layout: LayoutArg = "auto",
    source_grid: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert a checkpoint of any supported layout into our (timm) names for `model`.

    Args:
        state_dict: as returned by `load_state_dict_file` (tensors, or numpy arrays for JAX).
        model: the `VisionTransformer` the result is for; its grid, prefix tokens and
            resampler decide how the position embedding is resampled.
        layout: "auto" (see `detect_layout`), "timm", "torchvision", "hf" or "jax".
        source_grid: (h, w) token grid the checkpoint's position embedding was trained on;
            default: square, from its row count.

    Returns:
        name -> tensor in the model's layouts; `pos_embed` is (1, P + h*w, C) for the model's
        grid. Keys the layout does not know keep their name. Dropped tensors are logged.

    Raises:
        ValueError: unknown layout, patch kernel size mismatch, non-square grid without `source_grid`.
    """
    result = _convert(state_dict, model, layout, source_grid)
    for note in result.notes:
        logger.info(note)
    return result.state_dict


# ---------------------------------------------------------------------------------------- loading
def _first(keys: list[str], count: int = 5) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def load_pretrained(
    model: VisionTransformer,
    path: str | os.PathLike,
    layout: LayoutArg = "auto",
    strict: bool = True,
    reset_head: bool = False,
    source_grid: tuple[int, int] | None = None,
) -> LoadReport:
    """Load a checkpoint file of any supported layout into `model`.

    Nothing in `model` changes unless every check passes.

    Args:
        model: the `VisionTransformer` to fill (built e.g. with `weight_init="skip"`).
        path: a .safetensors, .pth/.pt/.bin/.ckpt or JAX .npz file.
        layout: "auto", "timm", "torchvision", "hf" or "jax".
        strict: any missing or unexpected key is an error.
        reset_head: do not load `head.*` (fine-tuning to another class count); the model keeps
            its freshly initialised head, and its head keys do not count as missing.
        source_grid: (h, w) the checkpoint's position embedding was trained on, when it is not square.

    Returns:
        a `LoadReport`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: unreadable file, unknown layout, missing / unexpected keys with `strict`,
            or a tensor whose shape differs from the model's (always), each naming the file.
    """
    raw = load_state_dict_file(path)
    try:
        result = _convert(raw, model, layout, source_grid)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    checkpoint = result.state_dict
    notes = list(result.notes)
    if reset_head:
        dropped = [key for key in checkpoint if key.startswith("head.")]
        for key in dropped:
            del checkpoint[key]
        if dropped:
            notes.append(f"kept the model's own head; skipped {', '.join(dropped)} from the checkpoint")

    own = model.state_dict()
    missing = [key for key in own if key not in checkpoint and not (reset_head and key.startswith("head."))]
    unexpected = [key for key in checkpoint if key not in own]
    if strict and (missing or unexpected):
        hint = ""
        if missing and all(key.startswith("head.") for key in missing):
            hint = "; the checkpoint has no head for this model: pass reset_head=True to keep the model's own"
        raise ValueError(
            f"{path} ({result.layout} layout) does not fit the model: {len(missing)} missing keys "
            f"[{_first(missing)}], {len(unexpected)} unexpected keys [{_first(unexpected)}]{hint}"
        )
    # In the model's order, so the first reported is the first a reader meets (cls_token, pos_embed, ...).
    mismatched = [key for key in own if key in checkpoint and checkpoint[key].shape != own[key].shape]
    if mismatched:
        key = mismatched[0]
        more = f" (and {len(mismatched) - 1} more mismatched tensors)" if len(mismatched) > 1 else ""
        hint = "; pass reset_head=True to keep the model's own head" if key.startswith("head.") else ""
        raise ValueError(
            f"{path}: shape mismatch for {key}: checkpoint {tuple(checkpoint[key].shape)} vs "
            f"model {tuple(own[key].shape)}{more}{hint}"
        )

    # All checks passed: only now touch the model. strict=False because the key sets were checked above.
    model.load_state_dict({key: value for key, value in checkpoint.items() if key in own}, strict=False)
    for note in notes:
        logger.info(note)
    return LoadReport(
        layout=result.layout,
        missing=missing,
        unexpected=unexpected,
        resampled_pos_embed=result.resampled_pos_embed,
        head_reset=reset_head,
        notes=notes,
    )
