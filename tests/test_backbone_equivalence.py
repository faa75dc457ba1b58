"""Our ViT and timm's VisionTransformer with the same weights compute the same numbers.

fp32, atol 1e-5, at the native 224 and at a non-square size where both resample the learned
position embedding with the same method.
"""

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torchvision.models.vision_transformer import interpolate_embeddings

from vit_backbone import create_vit, resample_pos_embed

PAIRS = [("vit_tiny_patch16", "vit_tiny_patch16_224"), ("vit_base_patch16", "vit_base_patch16_224")]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def twin_models(ours_name: str, timm_name: str, **kwargs):
    reference = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
    ours = create_vit(ours_name, weight_init="skip").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


@pytest.mark.parametrize(("ours_name", "timm_name"), PAIRS)
def test_same_features_and_logits_at_224(ours_name: str, timm_name: str) -> None:
    ours, reference = twin_models(ours_name, timm_name)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected_tokens = reference.forward_features(images)
        features = ours.forward_features(images)
        torch.testing.assert_close(features.patch_tokens, expected_tokens[:, 1:], **TOL)
        torch.testing.assert_close(features.cls_token, expected_tokens[:, 0], **TOL)
        torch.testing.assert_close(ours.forward_head(features), reference.forward_head(expected_tokens), **TOL)
        torch.testing.assert_close(ours(images), reference(images), **TOL)
    assert features.grid_size == (14, 14)


@pytest.mark.parametrize(("ours_name", "timm_name"), PAIRS)
def test_same_logits_at_a_non_square_size(ours_name: str, timm_name: str) -> None:
    # timm resamples per forward with bicubic + antialias: our "timm" resampler.
    ours, reference = twin_models(ours_name, timm_name, dynamic_img_size=True)
    assert ours.pos_embed_resampler == "timm"
    images = torch.randn(2, 3, 160, 288)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), **TOL)
        features = ours.forward_features(images)
    assert features.grid_size == (10, 18)
    assert features.patch_map().shape == (2, ours.embed_dim, 10, 18)


def test_forward_intermediates_match_timm() -> None:
    ours, reference = twin_models("vit_tiny_patch16", "vit_tiny_patch16_224", dynamic_img_size=True)
    images = torch.randn(1, 3, 224, 320)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, indices=[2, 5, 11], norm=True, intermediates_only=True)
        got = ours.forward_intermediates(images, indices=[2, 5, -1], norm=True)
    assert [tuple(t.shape) for t in got] == [(1, 192, 14, 20)] * 3
    for ours_map, timm_map in zip(got, expected, strict=True):
        torch.testing.assert_close(ours_map, timm_map, **TOL)


def test_timm_resampler_equals_timm_function() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 32)
    expected = resample_abs_pos_embed(pos, new_size=(9, 21), old_size=(14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(resample_pos_embed(pos, (14, 14), (9, 21), 1, "timm"), expected, atol=0, rtol=0)


def test_torchvision_resampler_equals_torchvision_interpolation() -> None:
    hidden = 48
    pos = torch.randn(1, 1 + 14 * 14, hidden)
    state = interpolate_embeddings(image_size=384, patch_size=16, model_state={"encoder.pos_embedding": pos})
    expected = state["encoder.pos_embedding"]
    got = resample_pos_embed(pos, (14, 14), (24, 24), num_prefix_tokens=1, resampler="torchvision")
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    # and the two libraries really differ, which is why the choice exists
    timm_way = resample_pos_embed(pos, (14, 14), (24, 24), num_prefix_tokens=1, resampler="timm")
    assert (timm_way - expected).abs().max() > 1e-3


def test_torchvision_resampler_matches_timm_configured_alike_at_non_square() -> None:
    pos = torch.randn(1, 1 + 7 * 7, 16)
    expected = resample_abs_pos_embed(
        pos, new_size=(5, 12), old_size=(7, 7), num_prefix_tokens=1, antialias=False, align_corners=True
    )
    torch.testing.assert_close(resample_pos_embed(pos, (7, 7), (5, 12), 1, "torchvision"), expected)
