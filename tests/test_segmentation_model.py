"""TransUNet's shapes, skip wiring, weight loading; the CE + Dice loss; slice transforms.

The R50-ViT-B/16 layout is checked against the published one (TransUNet, networks/vit_seg_modeling.py:
skips 64@112, 256@56, 512@28; 196 tokens of 768; decoder 256@28, 128@56, 64@112, 16@224; head
C@224). Everything else runs on small models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from test_weights import randomize_, to_jax_npz

from vit_backbone import BackboneConfig, create_vit
from vit_segmentation.config import AugmentConfig, ModelConfig
from vit_segmentation.losses import CeDiceLoss, DiceLoss
from vit_segmentation.model import TransUNet, build_transunet
from vit_segmentation.transforms import (
    GroupGamma,
    build_eval_transform,
    build_train_transform,
    resize_image,
    resize_labels,
)

SMALL_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 0}
SMALL_HYBRID = {**SMALL_VIT, "hybrid_layers": (1, 1, 1)}  # stride 16, skips at strides 2, 4, 8


# ---------------------------------------------------------------------------------------- shapes
@pytest.fixture(scope="module")
def r50_vit_b16() -> TransUNet:
    torch.manual_seed(0)
    backbone = create_vit("vit_base_r50_s16", num_classes=0, weight_init="skip")
    return TransUNet(backbone, num_classes=9).eval()


def shapes(stages: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in stages.items()}


def test_r50_vit_b16_matches_transunet_layout_at_224(r50_vit_b16: TransUNet) -> None:
    with torch.no_grad():
        stages = r50_vit_b16.forward_stages(torch.randn(1, 1, 224, 224))  # grey slice, repeated to RGB
    assert shapes(stages) == {
        "input": (1, 3, 224, 224),
        "skip.stem": (1, 64, 112, 112),
        "skip.stages.0": (1, 256, 56, 56),
        "skip.stages.1": (1, 512, 28, 28),
        "tokens": (1, 196, 768),
        "token_map": (1, 768, 14, 14),
        "conv_more": (1, 512, 14, 14),
        "decoder.0": (1, 256, 28, 28),
        "decoder.1": (1, 128, 56, 56),
        "decoder.2": (1, 64, 112, 112),
        "decoder.3": (1, 16, 224, 224),
        "logits": (1, 9, 224, 224),
    }
    assert r50_vit_b16.skip_names == ["stages.1", "stages.0", "stem", None]
    # TransUNet's decoder input channels: 512+512, 256+256, 128+64, 64 (+ no skip).
    assert [stage.conv1[0].in_channels for stage in r50_vit_b16.decoder] == [1024, 512, 192, 64]


def test_r50_vit_b16_non_square_input_uses_the_true_grid(r50_vit_b16: TransUNet) -> None:
    with torch.no_grad():
        stages = r50_vit_b16.forward_stages(torch.randn(1, 3, 160, 224))
    got = shapes(stages)
    assert got["skip.stem"] == (1, 64, 80, 112)
    assert got["skip.stages.1"] == (1, 512, 20, 28)
    assert got["tokens"] == (1, 140, 768) and got["token_map"] == (1, 768, 10, 14)
    assert got["decoder.0"] == (1, 256, 20, 28) and got["decoder.3"] == (1, 16, 160, 224)
    assert got["logits"] == (1, 9, 160, 224)


@pytest.mark.parametrize("n_skip", [0, 1, 2, 3])
def test_n_skip_chooses_the_deepest_skips(n_skip: int) -> None:
    backbone = create_vit("vit_base_r50_s16", **SMALL_HYBRID)
    model = TransUNet(backbone, 4, n_skip=n_skip, decoder_channels=(16, 8, 8, 4), head_channels=16).eval()
    expected = ["stages.1", "stages.0", "stem", None][:n_skip] + [None] * (4 - n_skip)
    assert model.skip_names == expected
    skip_channels = {"stages.1": 512, "stages.0": 256, "stem": 64, None: 0}
    inputs = [16, 16, 8, 8]
    wanted = [channels + skip_channels[name] for channels, name in zip(inputs, expected, strict=True)]
    assert [stage.conv1[0].in_channels for stage in model.decoder] == wanted
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 48)).shape == (2, 4, 32, 48)


def test_too_many_skips_is_a_clear_error() -> None:
    backbone = create_vit("vit_base_r50_s16", **SMALL_HYBRID)
    message = r"n_skip=4 is not possible with 3 skip maps \(stages.1, stages.0, stem\)"
    with pytest.raises(ValueError, match=message):
        TransUNet(backbone, 4, n_skip=4, decoder_channels=(8, 8, 8, 8), head_channels=8)


def test_plain_vit_is_vit_cup_and_refuses_skips() -> None:
    backbone = create_vit("vit_base_patch16", **SMALL_VIT)
    model = TransUNet(backbone, 3, n_skip=0, decoder_channels=(16, 8, 8, 4), head_channels=16).eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, 32, 64))
    assert not any(name.startswith("skip.") for name in stages)
    assert stages["token_map"].shape == (1, 32, 2, 4) and stages["logits"].shape == (1, 3, 32, 64)
    with pytest.raises(ValueError, match="n_skip=3 is not possible with a plain ViT, which has no CNN skip maps"):
        TransUNet(create_vit("vit_base_patch16", **SMALL_VIT), 3, n_skip=3)


def test_decoder_depth_must_match_the_patch_size() -> None:
    backbone = create_vit("vit_base_patch16", **SMALL_VIT, patch_size=8)
    with pytest.raises(ValueError, match="patch size is 8: give 3 decoder channels"):
        TransUNet(backbone, 3, n_skip=0, decoder_channels=(16, 8, 8, 4))
    model = TransUNet(backbone, 3, n_skip=0, decoder_channels=(16, 8, 4), head_channels=16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 24, 40)).shape == (1, 3, 24, 40)


def test_one_channel_backbone_and_channel_errors() -> None:
    model = TransUNet(create_vit("vit_base_patch16", **SMALL_VIT, in_chans=1), 3, n_skip=0,
                      decoder_channels=(8, 8, 8, 8), head_channels=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="input has 3 channels but the backbone takes 1"):
        model(torch.randn(1, 3, 32, 32))


def test_build_from_config_with_a_small_hybrid() -> None:
    backbone = BackboneConfig(preset="vit_base_r50_s16", embed_dim=32, depth=1, num_heads=2, hybrid_layers=[1, 1],
                              img_size=[32, 48], in_chans=1)
    config = ModelConfig(backbone, num_classes=5, n_skip=2, decoder_channels=[16, 8, 4], head_channels=16)
    model = build_transunet(config)
    assert model.backbone.patch_size == 8 and model.in_chans == 1
    assert model.skip_names == ["stages.0", "stem", None]
    assert model.backbone.grid_size == (4, 6)
    logits = model(torch.randn(2, 1, 32, 48))
    logits.mean().backward()  # every parameter takes part
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_jax_r50_vit_npz_loads_into_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = randomize_(timm.create_model("vit_base_r50_s16_224", depth=2, num_classes=21843), seed=3)
    path = to_jax_npz(reference.state_dict(), num_heads=12, path=tmp_path / "R50+ViT-B_16.npz")
    config = ModelConfig(BackboneConfig(preset="vit_base_r50_s16", depth=2, img_size=[224, 224], pretrained=str(path)))
    model = build_transunet(config).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.forward_features(images)[:, 1:]  # timm keeps the class token first
        stages = model.forward_stages(images)
    torch.testing.assert_close(stages["tokens"], expected, atol=1e-5, rtol=1e-5)
    assert stages["logits"].shape == (1, 9, 224, 224)
    with pytest.raises(FileNotFoundError, match="model.backbone.pretrained='missing.npz': no such file"):
        build_transunet(ModelConfig(BackboneConfig(preset="vit_base_r50_s16", pretrained="missing.npz")))


# ---------------------------------------------------------------------------------------- losses
def dice_loss_by_hand(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> float:
    probs = logits.double().softmax(dim=1).numpy()
    labels_np = labels.numpy()
    total = 0.0
    for k in range(probs.shape[1]):
        target = (labels_np == k).astype(np.float64)
        score = probs[:, k]
        intersection = float((score * target).sum())
        denominator = float((score * score).sum() + (target * target).sum())
        total += 1 - (2 * intersection + smooth) / (denominator + smooth)
    return total / probs.shape[1]


def test_dice_and_ce_dice_match_a_direct_computation() -> None:
    logits = torch.randn(3, 4, 5, 6)
    labels = torch.randint(0, 4, (3, 5, 6))
    labels[:, 0, 0] = 0
    labels[labels == 2] = 1  # class 2 absent from the labels: its Dice counts as a near-perfect miss
    expected = dice_loss_by_hand(logits, labels)
    assert DiceLoss(4)(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    parts = CeDiceLoss(4, ce_weight=0.3, dice_weight=0.7).components(logits, labels)
    ce = F.cross_entropy(logits, labels).item()
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(0.3 * ce + 0.7 * expected, rel=1e-5)


def test_perfect_logits_give_zero_dice_loss() -> None:
    labels = torch.randint(0, 3, (2, 8, 8))
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 100
    assert DiceLoss(3)(logits, labels).item() < 1e-4


def test_bf16_logits_are_computed_in_float32() -> None:
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    loss = CeDiceLoss(3)(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(CeDiceLoss(3)(logits.bfloat16().float(), labels).item(), rel=1e-6)


def test_labels_out_of_range_name_the_values() -> None:
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0], labels[0, 1, 1] = 7, -1
    with pytest.raises(ValueError, match=r"labels hold values \[-1, 7\] outside \[0, 3\) for num_classes=3"):
        CeDiceLoss(3)(logits, labels)
    with pytest.raises(ValueError, match="do not fit"):
        DiceLoss(3)(logits, labels[:, :2])
    with pytest.raises(ValueError, match="integer"):
        DiceLoss(3)(logits, labels.float())


# ---------------------------------------------------------------------------------------- transforms
def square_case(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((size, size), dtype=np.int64)
    labels[4:14, 6:24] = 1
    labels[18:28, 10:16] = 2
    return labels.astype(np.float32) / 2, labels


def test_flips_move_image_and_labels_together() -> None:
    image, labels = square_case()
    transform = build_train_transform((32, 32), rot_flip_prob=1.0, rotate_prob=0.0)
    seen = set()
    for seed in range(12):
        transform.set_seed(seed)
        out_image, out_labels = transform(image, labels)
        assert out_image.shape == (1, 32, 32) and out_labels.dtype == torch.int64
        torch.testing.assert_close(out_image[0], out_labels.float() / 2)  # still aligned, exactly
        seen.add(out_labels.numpy().tobytes())
    assert len(seen) >= 4  # rot90 x flips give several orientations


def test_rotation_keeps_label_values_and_alignment() -> None:
    image, labels = square_case(64)
    transform = build_train_transform((48, 80), rot_flip_prob=0.0, rotate_prob=1.0, rotate_limit=20,
                                      scale=(0.9, 1.1), interpolation="bilinear")
    transform.set_seed(5)
    out_image, out_labels = transform(image, labels)
    assert out_image.shape == (1, 48, 80) and out_labels.shape == (48, 80)
    assert set(np.unique(out_labels.numpy())) <= {0, 1, 2}  # nearest: no invented classes
    agreement = (out_image[0] * 2).round().long() == out_labels
    assert agreement.float().mean() > 0.9


def test_elastic_deformation_moves_image_and_labels_together() -> None:
    image, labels = square_case(64)
    transform = build_train_transform((64, 64), rot_flip_prob=0.0, rotate_prob=0.0, elastic_prob=1.0,
                                      elastic_alpha=60.0, elastic_sigma=4.0, interpolation="bilinear")
    plain = build_train_transform((64, 64), rot_flip_prob=0.0, rotate_prob=0.0, interpolation="bilinear")
    _, unchanged = plain(image, labels)
    transform.set_seed(3)
    out_image, out_labels = transform(image, labels)
    assert set(np.unique(out_labels.numpy())) <= {0, 1, 2}  # nearest: no invented classes
    assert (out_labels != unchanged).any()  # it did deform
    agreement = (out_image[0] * 2).round().long() == out_labels
    assert agreement.float().mean() > 0.95  # the same field moved both
    transform.set_seed(3)
    again = transform(image, labels)
    torch.testing.assert_close(again[1], out_labels)  # seeded like every other step
    with pytest.raises(ValueError, match="elastic_prob=1.5 is not a probability"):
        build_train_transform((32, 32), elastic_prob=1.5)


def test_gamma_bends_each_channel_group_inside_its_range() -> None:
    rng = np.random.default_rng(0)
    # Two modalities with two 2.5D neighbours on each side: channels 0-4 and 5-9, different ranges.
    image = np.concatenate([rng.random((5, 24, 30), dtype=np.float32),
                            rng.normal(size=(5, 24, 30)).astype(np.float32) * 3 - 1])
    labels = np.zeros((24, 30), dtype=np.int64)
    transform = build_train_transform((24, 30), rot_flip_prob=0.0, rotate_prob=0.0, gamma_prob=1.0,
                                      gamma_range=(0.5, 2.0), channel_group=5, interpolation="bilinear")
    transform.set_seed(7)
    out, out_labels = transform(image, labels)
    out = out.numpy()
    assert out.shape == image.shape and torch.equal(out_labels, torch.zeros(24, 30, dtype=torch.int64))
    gammas = []
    for group in (slice(0, 5), slice(5, 10)):
        low, high = image[group].min(), image[group].max()
        np.testing.assert_allclose([out[group].min(), out[group].max()], [low, high], rtol=1e-5, atol=1e-5)
        # One gamma per group: recover it from every pixel of the group and check they agree.
        scaled_in = ((image[group] - low) / (high - low)).ravel()
        scaled_out = ((out[group] - low) / (high - low)).ravel()
        inside = (scaled_in > 0.05) & (scaled_in < 0.95)
        per_pixel = np.log(np.clip(scaled_out[inside], 1e-6, None)) / np.log(scaled_in[inside])
        assert per_pixel.std() < 1e-3  # the neighbouring slices share one curve
        gammas.append(float(np.median(per_pixel)))
        assert 0.5 <= gammas[-1] <= 2.0
    assert abs(gammas[0] - gammas[1]) > 1e-3  # the modalities draw their own
    transform.set_seed(7)
    torch.testing.assert_close(transform(image, labels)[0].numpy(), out)  # seeded like every other step
    constant = np.full((1, 8, 8), 0.3, dtype=np.float32)
    assert np.array_equal(GroupGamma((0.5, 2.0), p=1.0).apply(constant[0], gammas=[2.0]), constant[0])
    with pytest.raises(ValueError, match="not a multiple of the gamma group size 3"):
        build_train_transform((24, 30), rot_flip_prob=0.0, rotate_prob=0.0, gamma_prob=1.0,
                              channel_group=3)(image, labels)
    with pytest.raises(ValueError, match="gamma_range"):
        AugmentConfig(gamma_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="gamma_prob=2"):
        AugmentConfig(gamma_prob=2.0)


def test_same_seed_same_sample_and_eval_is_resize_only() -> None:
    image = np.random.default_rng(0).random((40, 30), dtype=np.float32)
    labels = (image > 0.5).astype(np.int64)
    transform = build_train_transform((32, 32))
    outputs = []
    for seed in (1, 1, 2, 3, 4):
        transform.set_seed(seed)
        outputs.append(transform(image, labels))
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    torch.testing.assert_close(outputs[0][1], outputs[1][1])
    assert len({out[0].numpy().tobytes() for out in outputs}) > 2  # other seeds, other draws
    evaluation = build_eval_transform((32, 48))
    out_image, out_labels = evaluation(image, labels)
    np.testing.assert_allclose(out_image[0].numpy(), resize_image(image, (32, 48)))
    np.testing.assert_array_equal(out_labels.numpy(), resize_labels(labels, (32, 48)))


def test_resize_labels_is_nearest_and_inverts_an_integer_upscale() -> None:
    labels = np.random.default_rng(1).integers(0, 9, size=(13, 7))
    up = resize_labels(labels, (26, 21))
    np.testing.assert_array_equal(up, labels.repeat(2, axis=0).repeat(3, axis=1))
    np.testing.assert_array_equal(resize_labels(up, (13, 7)), labels)
    with pytest.raises(ValueError, match=r"negative values \[-3\]"):
        build_eval_transform((8, 8))(np.zeros((4, 4), np.float32), np.full((4, 4), -3))
