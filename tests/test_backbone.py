"""Behaviour of the backbone: presets, feature API, options, errors, compile and export."""

import io

import pytest
import timm
import torch

import vit_backbone.attention as attention_module
from vit_backbone import (
    Attention,
    FeatureSpec,
    VisionTransformer,
    create_vit,
    preset_config,
    preset_names,
    resolve_attention_kernel,
    sincos_2d,
)


def tiny_vit(**overrides) -> VisionTransformer:
    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 5}
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_and_runs_forward_and_backward(name: str) -> None:
    config = preset_config(name)
    patch = config["patch_size"]
    # A 2 x 3 patch grid keeps the big presets cheap; the position embedding is resampled to it.
    model = create_vit(name, num_classes=3)
    images = torch.randn(2, config.get("in_chans", 3), 2 * patch, 3 * patch, requires_grad=True)
    logits = model(images)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert all(p.grad is not None for p in model.blocks[-1].parameters())


@pytest.mark.parametrize(
    ("ours", "reference"),
    [("vit_tiny_patch16", "vit_tiny_patch16_224"), ("vit_small_patch32", "vit_small_patch32_224"),
     ("vit_large_patch16", "vit_large_patch16_224"), ("vit_huge_patch14", "vit_huge_patch14_224"),
     ("vit_base_r50_s16", "vit_base_r50_s16_224")],
)
def test_presets_have_timm_parameter_counts(ours: str, reference: str) -> None:
    with torch.device("meta"):
        timm_model = timm.create_model(reference, pretrained=False, num_classes=1000)
        our_model = create_vit(ours, num_classes=1000, weight_init="skip")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(our_model) == count(timm_model)
    assert set(our_model.state_dict()) == set(timm_model.state_dict())


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="vit_base_patch16"):
        create_vit("vit_base_patch17")


# ---------------------------------------------------------------- feature API
@pytest.mark.parametrize("size", [(224, 224), (160, 288)])
def test_forward_intermediates_shapes_and_specs(size: tuple[int, int]) -> None:
    model = create_vit("vit_tiny_patch16", depth=4).eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        maps = model.forward_intermediates(images, indices=[0, -1])
        last_two = model.forward_intermediates(images, indices=2, output_fmt="NLC")
        features = model.forward_features(images)
    grid = (size[0] // 16, size[1] // 16)
    specs = model.feature_specs()
    assert [tuple(m.shape) for m in maps] == [(2, specs["blocks.0"].channels, *grid)] * 2
    assert [tuple(t.shape) for t in last_two] == [(2, grid[0] * grid[1], 192)] * 2
    torch.testing.assert_close(last_two[1].transpose(1, 2).reshape(2, 192, *grid), maps[1])
    assert specs["blocks.3"] == FeatureSpec(channels=192, stride=16)
    # the last block, normed, is what forward_features returns
    normed = model.forward_intermediates(images, indices=[3], norm=True)[0]
    torch.testing.assert_close(normed, features.patch_map())


def test_forward_intermediates_rejects_bad_indices() -> None:
    model = tiny_vit()
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[3])
    with pytest.raises(ValueError, match="last 4 blocks"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=4)


@pytest.mark.parametrize("size", [(224, 224), (192, 320)])
def test_hybrid_skips_shapes_and_specs(size: tuple[int, int]) -> None:
    model = create_vit("vit_base_r50_s16", depth=1, num_classes=0).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, *size))
    specs = model.feature_specs()
    height, width = size
    assert {name: tuple(t.shape) for name, t in features.skips.items()} == {
        "stem": (1, 64, height // 2, width // 2),
        "stages.0": (1, 256, height // 4, width // 4),
        "stages.1": (1, 512, height // 8, width // 8),
    }
    for name, skip in features.skips.items():
        assert (skip.shape[1], height // skip.shape[2]) == (specs[name].channels, specs[name].stride)
    assert features.grid_size == (height // 16, width // 16)
    assert features.patch_tokens.shape == (1, (height // 16) * (width // 16), 768)


def test_forward_head_pools_as_configured() -> None:
    model = tiny_vit(global_pool="avg", class_token=False).eval()
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.cls_token is None
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), features.patch_tokens.mean(1))
    per_token = tiny_vit(global_pool="none")(torch.randn(2, 3, 32, 32))
    assert per_token.shape == (2, 16, 5)
    with pytest.raises(ValueError, match="class_token"):
        tiny_vit(global_pool="token", class_token=False)


# ---------------------------------------------------------------- options
def test_register_tokens_are_split_out() -> None:
    model = tiny_vit(reg_tokens=4).eval()
    features = model.forward_features(torch.randn(2, 3, 32, 48))
    assert features.register_tokens.shape == (2, 4, 32)
    assert features.patch_tokens.shape == (2, 24, 32)
    assert model.pos_embed.shape == (1, 1 + 4 + 16, 32)
    assert tiny_vit(reg_tokens=4, no_embed_class=True).pos_embed.shape == (1, 16, 32)


@pytest.mark.parametrize("kind", ["sincos1d", "sincos2d", "none"])
def test_fixed_position_embeddings_follow_the_grid(kind: str) -> None:
    model = tiny_vit(pos_embed=kind).eval()
    assert model.pos_embed is None
    assert "pos_embed" not in model.state_dict()
    out = model(torch.randn(1, 3, 40, 24))  # 5 x 3 grid, not the 4 x 4 it was built for
    assert out.shape == (1, 5)


def test_sincos2d_encodes_rows_and_columns() -> None:
    table = sincos_2d((3, 4), 16)
    assert table.shape == (12, 16)
    # the first frequency of x is 1: sin(column index) in channel 0, sin(row index) in channel 8
    torch.testing.assert_close(table[:, 0], torch.arange(4.0).repeat(3).sin())
    torch.testing.assert_close(table[:, 8], torch.arange(3.0).repeat_interleave(4).sin())


def test_sincos_positions_are_not_added_in_place() -> None:
    model = tiny_vit(pos_embed="sincos2d").eval()
    before = model.fixed_pos_embed.clone()
    model(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(model.fixed_pos_embed, before, atol=0, rtol=0)


def test_attention_scale_is_inverse_sqrt_head_dim() -> None:
    attention = Attention(dim=96, num_heads=6)
    assert attention.scale == pytest.approx(16**-0.5)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_kernels_agree_with_and_without_a_mask(qk_norm: bool) -> None:
    attention = Attention(dim=64, num_heads=4, qk_norm=qk_norm).eval()
    tokens = torch.randn(2, 10, 64)
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., 7:] = False
    outputs = {}
    for kernel in ("sdpa", "manual"):
        attention.kernel = kernel
        outputs[kernel] = (attention(tokens), attention(tokens, attn_mask=mask))
    torch.testing.assert_close(outputs["sdpa"][0], outputs["manual"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["sdpa"][1], outputs["manual"][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_kernel_choice(native_bf16: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention_module, "cpu_has_native_bf16", lambda: native_bf16)
    short = torch.randn(1, 65, 8)
    bf16_kernel = "manual" if native_bf16 else "sdpa"
    assert resolve_attention_kernel("auto", short) == "sdpa"  # fp32
    assert resolve_attention_kernel("auto", short.bfloat16()) == bf16_kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_attention_kernel("auto", short) == bf16_kernel
        assert resolve_attention_kernel("auto", torch.randn(1, 1025, 8)) == "sdpa"
    assert resolve_attention_kernel("sdpa", short.bfloat16()) == "sdpa"
    with pytest.raises(ValueError, match="flash"):
        resolve_attention_kernel("flash", short)


def test_token_mask_hides_patches_from_attention() -> None:
    model = tiny_vit(depth=2).eval()
    images = torch.randn(1, 3, 32, 32)
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[:, 12:] = False  # the last row of patches is "padding"
    changed = images.clone()
    changed[..., 24:, :] = torch.randn(1, 3, 8, 32)
    with torch.no_grad():
        first = model.forward_features(images, token_mask=mask)
        second = model.forward_features(changed, token_mask=mask)
    torch.testing.assert_close(first.cls_token, second.cls_token)
    torch.testing.assert_close(first.patch_tokens[:, :12], second.patch_tokens[:, :12])


def test_drop_path_rates_grow_linearly_and_only_act_in_training() -> None:
    model = tiny_vit(depth=5, drop_path_rate=0.4)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    drop = model.blocks[-1].drop_path1
    x = torch.ones(4000, 1, 1)
    drop.train()
    dropped = drop(x)
    kept = dropped[dropped != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.6))  # survivors rescaled by 1 / keep_prob
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.05)
    drop.eval()
    assert torch.equal(drop(x), x)


def test_layer_scale_starts_at_init_values() -> None:
    model = tiny_vit(init_values=1e-4)
    assert torch.all(model.blocks[0].ls1.gamma == 1e-4)
    assert "blocks.0.ls2.gamma" in model.state_dict()


def test_init_schemes() -> None:
    timm_init = tiny_vit(embed_dim=256, num_heads=4)
    assert timm_init.blocks[0].mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(timm_init.blocks[0].attn.qkv.bias == 0)
    jax_init = tiny_vit(embed_dim=256, num_heads=4, weight_init="jax")
    fc1 = jax_init.blocks[0].mlp.fc1.weight
    # xavier-uniform std = sqrt(2 / (fan_in + fan_out))
    assert fc1.std().item() == pytest.approx((2 / (256 + 1024)) ** 0.5, rel=0.05)
    assert torch.all(jax_init.head.weight == 0)
    nlhb = tiny_vit(weight_init="jax_nlhb")
    torch.testing.assert_close(nlhb.head.bias, torch.full((5,), -torch.log(torch.tensor(5.0)).item()))


# ---------------------------------------------------------------- training utilities
def test_grad_checkpointing_gives_the_same_gradients() -> None:
    model = tiny_vit(depth=3)
    images = torch.randn(2, 3, 32, 32)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(images).square().sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.set_grad_checkpointing(True)
    checkpointed = gradients()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_state_dict_round_trip() -> None:
    model = create_vit("vit_tiny_patch4_32", reg_tokens=2, init_values=1e-5, qk_norm=True).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = create_vit("vit_tiny_patch4_32", reg_tokens=2, init_values=1e-5, qk_norm=True, weight_init="skip")
    restored.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(images), model(images), atol=0, rtol=0)


def test_no_weight_decay_names_exist() -> None:
    model = tiny_vit(reg_tokens=1)
    assert model.no_weight_decay() <= {name for name, _ in model.named_parameters()}


# ---------------------------------------------------------------- bad input
def test_wrong_channel_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="1 channels but the model was built with in_chans=3"):
        tiny_vit()(torch.randn(1, 1, 32, 32))


def test_indivisible_size_is_a_clear_error_unless_padding_is_asked_for() -> None:
    with pytest.raises(ValueError, match="30x32 is not divisible by the patch size 8"):
        tiny_vit()(torch.randn(1, 3, 30, 32))
    padded = tiny_vit(dynamic_img_pad=True).eval()
    features = padded.forward_features(torch.randn(1, 3, 30, 33))
    assert features.grid_size == (4, 5)


def test_non_image_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tiny_vit()(torch.randn(3, 32, 32))


def test_bad_options_name_the_choices() -> None:
    with pytest.raises(ValueError, match="sincos2d"):
        tiny_vit(pos_embed="rope")
    with pytest.raises(ValueError, match="torchvision"):
        tiny_vit(pos_embed_resampler="lanczos")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        tiny_vit(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="stride of 16"):
        create_vit("vit_base_r50_s16", patch_size=32)


# ---------------------------------------------------------------- compile and export
def test_torch_compile_fullgraph_matches_eager() -> None:
    model = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images))


def test_torch_export_matches_eager() -> None:
    model = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (images,))
    torch.testing.assert_close(exported.module()(images), model(images))

    class Intermediates(torch.nn.Module):
        def __init__(self, vit: VisionTransformer) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return self.vit.forward_intermediates(x, indices=[0, 2])

    wrapper = Intermediates(model)
    exported = torch.export.export(wrapper, (images,))
    for got, expected in zip(exported.module()(images), wrapper(images), strict=True):
        torch.testing.assert_close(got, expected)
