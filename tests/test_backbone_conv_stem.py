"""The conv-stem ViT (Xiao et al. 2021): shapes, timm equivalence, initialisation and errors."""

from functools import partial

import pytest
import timm
import torch
from timm.layers import HybridEmbed
from torch import nn

from vit_backbone import ConvStemEmbed, VisionTransformer, create_vit
from vit_backbone.conv_stem import conv_stem_layers

STEM = (8, 16, 24)


def stem_vit(**overrides) -> VisionTransformer:
    kwargs = {"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "num_classes": 10, "conv_stem": STEM}
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)


def timm_twin(ours: VisionTransformer) -> nn.Module:
    """timm's own conv-stem ViT (ConvStem inside HybridEmbed, no extra projection) with `ours`'s weights."""
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=1, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2,
        embed_layer=partial(HybridEmbed, backbone=conv_stem_layers(STEM, 1, 32), proj=False),
    )
    reference.load_state_dict(ours.state_dict(), strict=True)
    return reference


def test_conv_stem_layers_stride_grid_and_specs() -> None:
    model = stem_vit().eval()
    embed = model.patch_embed
    assert isinstance(embed, ConvStemEmbed) and embed.stride == 8
    # three 3x3 stride-2 convs with BatchNorm + ReLU, then the plain 1x1 projection to the width
    convs = [module for module in embed.backbone.modules() if isinstance(module, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels, c.bias is not None) for c in convs] == [
        ((3, 3), (2, 2), 8, False), ((3, 3), (2, 2), 16, False), ((3, 3), (2, 2), 24, False), ((1, 1), (1, 1), 32, True)
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in embed.backbone.modules()) == 3
    assert embed.proj is convs[-1]
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 1, 32, 48))
    assert features.grid_size == (4, 6) and features.patch_tokens.shape == (2, 24, 32)
    assert features.skips == {}
    assert model.feature_specs()["norm"].stride == 8


@pytest.mark.parametrize("training", [True, False])
def test_conv_stem_vit_equals_timms_conv_stem_vit(training: bool) -> None:
    torch.manual_seed(0)
    ours = stem_vit()
    reference = timm_twin(ours)
    assert set(ours.state_dict()) == set(reference.state_dict())
    ours.train(training)
    reference.train(training)
    images = torch.randn(4, 1, 32, 32)
    # Training mode normalises with the batch statistics and updates the running ones alike.
    torch.testing.assert_close(ours(images), reference(images), atol=1e-6, rtol=1e-6)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


def test_conv_stem_init_keeps_the_cnn_and_targets_the_projection() -> None:
    torch.manual_seed(0)
    timm_init = stem_vit(embed_dim=64)
    torch.manual_seed(0)
    jax_init = stem_vit(embed_dim=64, weight_init="jax")
    # The 3x3 convolutions keep PyTorch's initialisation under either scheme ...
    first = timm_init.patch_embed.backbone[0].conv.weight
    torch.testing.assert_close(jax_init.patch_embed.backbone[0].conv.weight, first)
    # ... the 1x1 projection is the "patch embedding" the JAX scheme re-initialises (lecun normal, fan_in 24).
    assert jax_init.patch_embed.proj.weight.std().item() == pytest.approx((1 / 24) ** 0.5, rel=0.15)
    assert torch.all(jax_init.patch_embed.proj.bias == 0)


def test_conv_stem_errors_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"conv_stem=\(8, 16, 24\) gives a stride of 8 \(2\*\*3\), but patch_size=4"):
        stem_vit(patch_size=4)
    with pytest.raises(ValueError, match="hybrid_layers and conv_stem"):
        stem_vit(hybrid_layers=(1,))
    with pytest.raises(ValueError, match="at least one positive channel count"):
        stem_vit(conv_stem=(), patch_size=1)
    with pytest.raises(ValueError, match="28x28 is not divisible by the patch size 8"):
        stem_vit()(torch.randn(1, 1, 28, 28))
    padded = stem_vit(dynamic_img_pad=True).eval()
    with torch.no_grad():
        assert padded.forward_features(torch.randn(1, 1, 28, 28)).grid_size == (4, 4)


def test_conv_stem_through_a_preset_and_a_state_dict_round_trip() -> None:
    model = create_vit("vit_micro_patch4_28", img_size=32, patch_size=4, conv_stem=(8, 16), num_classes=3).eval()
    restored = create_vit("vit_micro_patch4_28", img_size=32, patch_size=4, conv_stem=(8, 16), num_classes=3,
                          weight_init="skip")
    restored.load_state_dict(model.state_dict(), strict=True)
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(images), model(images), atol=0, rtol=0)
        assert model.forward_features(images).grid_size == (8, 8)
