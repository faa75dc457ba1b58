"""Named ViT configurations.

The ImageNet-size presets are the published ViT/timm architectures (Dosovitskiy et al. 2021,
table 1: Ti/S from DeiT); their names are timm's without the resolution suffix, so a timm
checkpoint of `vit_base_patch16_224` loads into `create_vit("vit_base_patch16")`. The small
presets are for 28-64 px images (Fashion-MNIST, CIFAR) trained on CPUs.
"""

from __future__ import annotations

from typing import Any

from .vit import VisionTransformer

_TI = {"embed_dim": 192, "depth": 12, "num_heads": 3}
_S = {"embed_dim": 384, "depth": 12, "num_heads": 6}
_B = {"embed_dim": 768, "depth": 12, "num_heads": 12}
_L = {"embed_dim": 1024, "depth": 24, "num_heads": 16}
_H = {"embed_dim": 1280, "depth": 32, "num_heads": 16}

PRESETS: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16": {**_TI, "patch_size": 16, "img_size": 224},
    "vit_tiny_patch32": {**_TI, "patch_size": 32, "img_size": 224},
    "vit_small_patch16": {**_S, "patch_size": 16, "img_size": 224},
    "vit_small_patch32": {**_S, "patch_size": 32, "img_size": 224},
    "vit_base_patch16": {**_B, "patch_size": 16, "img_size": 224},
    "vit_base_patch32": {**_B, "patch_size": 32, "img_size": 224},
    "vit_large_patch16": {**_L, "patch_size": 16, "img_size": 224},
    "vit_large_patch32": {**_L, "patch_size": 32, "img_size": 224},
    "vit_huge_patch14": {**_H, "patch_size": 14, "img_size": 224},
    # Hybrid R50+ViT-B/16: ResNetV2 (3, 4, 9) to stride 16, then ViT-B (the TransUNet encoder).
    "vit_base_r50_s16": {**_B, "patch_size": 16, "img_size": 224, "hybrid_layers": (3, 4, 9)},
    # Small images on CPUs. 28 px / patch 4 = a 7x7 grid (Fashion-MNIST, MNIST: grey).
    "vit_micro_patch4_28": {"embed_dim": 128, "depth": 6, "num_heads": 4, "patch_size": 4, "img_size": 28, "in_chans": 1},
    # CIFAR-size ViT-Ti: 32 px / patch 4 = 8x8 grid, depth 6.
    "vit_tiny_patch4_32": {"embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 4, "img_size": 32},
    "vit_small_patch4_32": {"embed_dim": 384, "depth": 6, "num_heads": 6, "patch_size": 4, "img_size": 32},
    "vit_tiny_patch8_64": {"embed_dim": 192, "depth": 8, "num_heads": 3, "patch_size": 8, "img_size": 64},
}


def preset_names() -> list[str]:
    """All preset names, sorted."""
    return sorted(PRESETS)


def preset_config(name: str) -> dict[str, Any]:
    """The keyword arguments of preset `name` (a copy)."""
    if name not in PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; choose one of: {', '.join(preset_names())}")
    return dict(PRESETS[name])


def create_vit(name: str, **overrides: Any) -> VisionTransformer:
    """Build preset `name`, with any `VisionTransformer` keyword overridden.

    Example:
        >>> model = create_vit("vit_small_patch16", num_classes=10, drop_path_rate=0.1)
    """
    kwargs = preset_config(name)
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)
