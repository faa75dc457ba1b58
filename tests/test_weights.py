"""Weight import: checkpoints of timm, torchvision, Hugging Face and JAX give the same numbers.

Every reference model is randomly initialised (no hub here), saved to a file in `tmp_path`, loaded
with `load_pretrained` and compared in fp32 with the reference library's own forward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import _load_weights as timm_load_jax_weights
from torch import nn

from vit_backbone import (
    VisionTransformer,
    convert_state_dict,
    create_vit,
    load_pretrained,
    load_state_dict_file,
)
from vit_backbone.weights import detect_layout

TOL = {"atol": 1e-5, "rtol": 1e-5}


# ---------------------------------------------------------------------------------------- helpers
@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (torchvision zero-inits its head, norms start at 1/0)."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.GroupNorm) and module.weight is not None:
            module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def fresh_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().contiguous() for key, value in state_dict.items()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return fresh_copy(model.state_dict())


def assert_same_state(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def timm_tiny(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs), seed)


def to_jax_npz(state_dict: dict[str, torch.Tensor], num_heads: int, path: Path, prefix: str = "") -> Path:
    """Write a timm ViT (or R50 hybrid) state dict in the original google-research `.npz` layout.

    The inverse of timm's `_load_weights`: OIHW -> HWIO, Linear (out, in) -> Dense (in, out),
    qkv split into per-head (D, heads, head_dim) kernels, proj into (heads, head_dim, D).
    """
    arrays: dict[str, np.ndarray] = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        arrays[prefix + name] = tensor.detach().numpy().copy()

    def conv(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.permute(2, 3, 1, 0)

    put("embedding/kernel", conv(state_dict["patch_embed.proj.weight"]))
    put("embedding/bias", state_dict["patch_embed.proj.bias"])
    put("cls", state_dict["cls_token"])
    put("Transformer/posembed_input/pos_embedding", state_dict["pos_embed"])
    depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("blocks."))
    for i in range(depth):
        block, jax = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        dim = state_dict[block + "norm1.weight"].shape[0]
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            put(f"{jax}{theirs}/scale", state_dict[f"{block}{ours}.weight"])
            put(f"{jax}{theirs}/bias", state_dict[f"{block}{ours}.bias"])
        weights = state_dict[block + "attn.qkv.weight"].chunk(3, dim=0)
        biases = state_dict[block + "attn.qkv.bias"].chunk(3, dim=0)
        for name, weight, bias in zip(("query", "key", "value"), weights, biases, strict=True):
            put(f"{jax}MultiHeadDotProductAttention_1/{name}/kernel", weight.T.reshape(dim, num_heads, -1))
            put(f"{jax}MultiHeadDotProductAttention_1/{name}/bias", bias.reshape(num_heads, -1))
        put(f"{jax}MultiHeadDotProductAttention_1/out/kernel",
            state_dict[block + "attn.proj.weight"].T.reshape(num_heads, -1, dim))
        put(f"{jax}MultiHeadDotProductAttention_1/out/bias", state_dict[block + "attn.proj.bias"])
        for r in range(2):
            put(f"{jax}MlpBlock_3/Dense_{r}/kernel", state_dict[f"{block}mlp.fc{r + 1}.weight"].T)
            put(f"{jax}MlpBlock_3/Dense_{r}/bias", state_dict[f"{block}mlp.fc{r + 1}.bias"])
    put("Transformer/encoder_norm/scale", state_dict["norm.weight"])
    put("Transformer/encoder_norm/bias", state_dict["norm.bias"])
    put("head/kernel", state_dict["head.weight"].T)
    put("head/bias", state_dict["head.bias"])

    backbone = "patch_embed.backbone."
    if backbone + "stem.conv.weight" in state_dict:
        put("conv_root/kernel", conv(state_dict[backbone + "stem.conv.weight"]))
        # Older exports keep GroupNorm scales as (1, 1, 1, C); write one that way to cover it.
        put("gn_root/scale", state_dict[backbone + "stem.norm.weight"].reshape(1, 1, 1, -1))
        put("gn_root/bias", state_dict[backbone + "stem.norm.bias"])
        for key, value in state_dict.items():
            if not key.startswith(backbone + "stages."):
                continue
            _, _, _, stage, _, unit, *module, param = key.split(".")
            jax = f"block{int(stage) + 1}/unit{int(unit) + 1}/"
            module_name = ".".join(module)
            if module_name == "downsample.conv":
                put(jax + "conv_proj/kernel", conv(value))
            elif module_name == "downsample.norm":
                put(jax + f"gn_proj/{'scale' if param == 'weight' else 'bias'}", value)
            elif module_name.startswith("conv"):
                put(jax + f"{module_name}/kernel", conv(value))
            else:  # norm1..3 -> gn1..3
                put(jax + f"gn{module_name[-1]}/{'scale' if param == 'weight' else 'bias'}", value)
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------------------- files
def test_load_state_dict_file_unwraps_containers_and_prefixes(tmp_path: Path) -> None:
    tensor = torch.randn(3)
    path = tmp_path / "train.ckpt"
    torch.save({"model": {"module._orig_mod.cls_token": tensor}, "epoch": 3, "model_ema": {"x": tensor}}, path)
    loaded = load_state_dict_file(path)
    assert list(loaded) == ["cls_token"]
    assert torch.equal(loaded["cls_token"], tensor)


def test_load_state_dict_file_reads_npz_as_raw_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", **{"embedding/kernel": np.ones((2, 2, 3, 4), np.float32)})
    loaded = load_state_dict_file(tmp_path / "w.npz")
    assert isinstance(loaded["embedding/kernel"], np.ndarray)
    assert loaded["embedding/kernel"].shape == (2, 2, 3, 4)


# ---------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_checkpoint_gives_timm_logits(tmp_path: Path, suffix: str) -> None:
    reference = timm_tiny(seed=1)
    path = tmp_path / f"vit_tiny{suffix}"
    if suffix == ".safetensors":
        save_file(fresh_copy(reference.state_dict()), path)
    else:
        torch.save({"state_dict": reference.state_dict(), "epoch": 7}, path)
    ours = create_vit("vit_tiny_patch16", weight_init="skip").eval()
    report = load_pretrained(ours, path)
    assert (report.layout, report.missing, report.unexpected) == ("timm", [], [])
    assert not report.resampled_pos_embed and not report.head_reset
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), **TOL)


# ---------------------------------------------------------------------------------------- torchvision
@pytest.fixture(scope="module")
def torchvision_vit_b16() -> nn.Module:
    torch.manual_seed(0)
    return randomize_(torchvision.models.vit_b_16(weights=None), seed=2)


def test_torchvision_vit_b16_gives_torchvision_logits(tmp_path: Path, torchvision_vit_b16: nn.Module) -> None:
    path = tmp_path / "vit_b_16.pth"
    torch.save(torchvision_vit_b16.state_dict(), path)
    ours = create_vit("vit_base_patch16", weight_init="skip").eval()
    report = load_pretrained(ours, path)
    assert report.layout == "torchvision"
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), torchvision_vit_b16(images), **TOL)


def test_torchvision_legacy_mlp_names_and_pre_logits(tmp_path: Path, torchvision_vit_b16: nn.Module) -> None:
    # torchvision < 0.13 named the MLP Linears linear_1 / linear_2; representation_size added pre_logits.
    modern = torchvision_vit_b16.state_dict()
    legacy = {key.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): value
              for key, value in modern.items()}
    assert any(".mlp.linear_1." in key for key in legacy)
    legacy["heads.pre_logits.weight"] = torch.zeros(4, 768)
    legacy["heads.pre_logits.bias"] = torch.zeros(4)
    path = tmp_path / "vit_b_16_legacy.pth"
    torch.save(legacy, path)
    ours = create_vit("vit_base_patch16", weight_init="skip")
    report = load_pretrained(ours, path)
    assert any("heads.pre_logits.weight" in note for note in report.notes)
    expected = convert_state_dict(modern, ours, layout="torchvision")
    assert_same_state(ours, expected)


# ---------------------------------------------------------------------------------------- Hugging Face
HF_SIZE = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


@pytest.fixture(scope="module")
def hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    # HF's default layer_norm_eps is 1e-12; timm, torchvision and the JAX originals use 1e-6.
    config = ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        image_size=32, patch_size=8, num_labels=10, layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    return randomize_(ViTForImageClassification(config), seed=3)


def hf_v4_names(v5_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub (transformers v4) names, written here from the v5 in-memory names."""
    renames = [
        ("layers.", "encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    out = {}
    for key, value in v5_state.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


def test_hf_vit_v5_state_dict_gives_hf_logits(tmp_path: Path, hf_vit: nn.Module) -> None:
    state = hf_vit.state_dict()
    # What transformers 5 actually holds in memory (not the hub names):
    assert "vit.layers.0.attention.q_proj.weight" in state and "vit.layers.0.mlp.fc1.weight" in state
    path = tmp_path / "hf_v5.safetensors"
    save_file(fresh_copy(state), path)
    ours = VisionTransformer(**HF_SIZE, num_classes=10, weight_init="skip").eval()
    report = load_pretrained(ours, path)
    assert report.layout == "hf"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), hf_vit(pixel_values=images).logits, **TOL)


def test_hf_vit_save_pretrained_and_v4_hub_names(tmp_path: Path, hf_vit: nn.Module) -> None:
    hf_vit.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved" / "model.safetensors"
    # save_pretrained writes the hub (v4) names back, not the v5 in-memory ones.
    assert "vit.encoder.layer.0.attention.attention.query.weight" in load_state_dict_file(saved)
    handwritten = tmp_path / "hf_v4.safetensors"
    save_file(fresh_copy(hf_v4_names(hf_vit.state_dict())), handwritten)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf_vit(pixel_values=images).logits
    for path in (saved, handwritten):
        ours = VisionTransformer(**HF_SIZE, num_classes=10, weight_init="skip").eval()
        assert load_pretrained(ours, path).layout == "hf"
        with torch.no_grad():
            torch.testing.assert_close(ours(images), expected, **TOL)


def test_hf_vit_model_without_prefix_drops_pooler(tmp_path: Path, hf_vit: nn.Module) -> None:
    from transformers import ViTModel

    backbone = ViTModel(hf_vit.config).eval()  # add_pooling_layer=True: has pooler.dense
    backbone.load_state_dict({k.removeprefix("vit."): v for k, v in hf_vit.state_dict().items()
                              if k.startswith("vit.")}, strict=False)
    state = backbone.state_dict()
    assert "pooler.dense.weight" in state and "layers.0.attention.q_proj.weight" in state
    path = tmp_path / "hf_vitmodel.safetensors"
    save_file(fresh_copy(state), path)
    ours = VisionTransformer(**HF_SIZE, num_classes=0, weight_init="skip").eval()
    report = load_pretrained(ours, path)
    assert any("pooler.dense.weight" in note for note in report.notes)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(pixel_values=images).last_hidden_state
        features = ours.forward_features(images)
    torch.testing.assert_close(features.cls_token, expected[:, 0], **TOL)
    torch.testing.assert_close(features.patch_tokens, expected[:, 1:], **TOL)


# ---------------------------------------------------------------------------------------- JAX
def test_jax_npz_gives_timm_logits(tmp_path: Path) -> None:
    reference = timm_tiny(seed=4)
    path = to_jax_npz(reference.state_dict(), num_heads=3, path=tmp_path / "ViT-Ti_16.npz", prefix="opt/target/")
    # The writer is right if timm's own JAX loader recovers every tensor from it.
    check = timm_tiny(seed=5)
    timm_load_jax_weights(check, str(path))
    assert_same_state(check, fresh_copy(reference.state_dict()))

    ours = create_vit("vit_tiny_patch16", weight_init="skip").eval()
    report = load_pretrained(ours, path)
    assert (report.layout, report.missing, report.unexpected) == ("jax", [], [])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), **TOL)


def test_jax_r50_hybrid_npz_gives_timm_logits(tmp_path: Path) -> None:
    torch.manual_seed(6)
    reference = randomize_(timm.create_model("vit_base_r50_s16_224", depth=2, num_classes=10), seed=6)
    path = to_jax_npz(reference.state_dict(), num_heads=12, path=tmp_path / "R50+ViT-B_16.npz")
    check = randomize_(timm.create_model("vit_base_r50_s16_224", depth=2, num_classes=10), seed=7)
    timm_load_jax_weights(check, str(path))
    assert_same_state(check, fresh_copy(reference.state_dict()))

    ours = create_vit("vit_base_r50_s16", depth=2, num_classes=10, weight_init="skip").eval()
    report = load_pretrained(ours, path)
    assert (report.layout, report.missing, report.unexpected) == ("jax", [], [])
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), **TOL)


# ---------------------------------------------------------------------------------------- resampling
def test_load_time_pos_embed_resampling_matches_timm(tmp_path: Path) -> None:
    reference = timm_tiny(seed=8, dynamic_img_size=True)
    path = tmp_path / "vit_tiny_224.safetensors"
    save_file(fresh_copy(reference.state_dict()), path)
    ours = create_vit("vit_tiny_patch16", img_size=(256, 320), weight_init="skip").eval()
    report = load_pretrained(ours, path)
    assert report.resampled_pos_embed
    expected = resample_abs_pos_embed(reference.pos_embed.detach(), new_size=(16, 20), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.detach(), expected, atol=0, rtol=0)
    images = torch.randn(2, 3, 256, 320)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), **TOL)


def test_non_square_checkpoint_grid_needs_source_grid(tmp_path: Path) -> None:
    reference = timm_tiny(seed=9, img_size=(224, 160))  # 14 x 10 grid: 140 rows, not a square
    path = tmp_path / "vit_tiny_224x160.safetensors"
    save_file(fresh_copy(reference.state_dict()), path)
    ours = create_vit("vit_tiny_patch16", weight_init="skip")
    before = snapshot(ours)
    with pytest.raises(ValueError, match="source_grid") as error:
        load_pretrained(ours, path)
    assert str(path) in str(error.value)
    assert_same_state(ours, before)
    assert load_pretrained(ours, path, source_grid=(14, 10)).resampled_pos_embed
    expected = resample_abs_pos_embed(reference.pos_embed.detach(), new_size=(14, 14), old_size=(14, 10))
    torch.testing.assert_close(ours.pos_embed.detach(), expected, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------- head
def test_reset_head_keeps_the_new_head_and_loads_everything_else(tmp_path: Path) -> None:
    reference = timm_tiny(seed=10)  # 1000 classes
    path = tmp_path / "vit_tiny_in1k.pth"
    torch.save(reference.state_dict(), path)
    ours = create_vit("vit_tiny_patch16", num_classes=10)
    head_before = snapshot(ours.head)
    with pytest.raises(ValueError, match=r"head\.weight.*\(1000, 192\).*\(10, 192\)"):
        load_pretrained(ours, path)
    report = load_pretrained(ours, path, reset_head=True)
    assert report.head_reset and report.missing == [] and report.unexpected == []
    assert_same_state(ours.head, head_before)
    checkpoint = reference.state_dict()
    for key, value in ours.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, checkpoint[key]), key


def test_checkpoint_without_head_asks_for_reset_head(tmp_path: Path) -> None:
    state = {k: v for k, v in timm_tiny(seed=11).state_dict().items() if not k.startswith("head.")}
    path = tmp_path / "headless.safetensors"
    save_file(fresh_copy(state), path)
    ours = create_vit("vit_tiny_patch16", num_classes=10)
    with pytest.raises(ValueError, match="reset_head=True"):
        load_pretrained(ours, path)
    report = load_pretrained(ours, path, strict=False)
    assert report.missing == ["head.weight", "head.bias"]


# ---------------------------------------------------------------------------------------- layouts
def test_detect_layout_names_each_library(hf_vit: nn.Module) -> None:
    timm_state = {"patch_embed.proj.weight": torch.zeros(1), "pos_embed": torch.zeros(1)}
    assert detect_layout(timm_state) == "timm"
    assert detect_layout({"conv_proj.weight": torch.zeros(1), "class_token": torch.zeros(1)}) == "torchvision"
    assert detect_layout(hf_vit.state_dict()) == "hf"
    assert detect_layout({"opt/target/embedding/kernel": np.zeros(1)}) == "jax"
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        detect_layout(torchvision.models.resnet18(weights=None).state_dict())


def test_unknown_layout_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="layout='keras'"):
        convert_state_dict({"pos_embed": torch.zeros(1)}, create_vit("vit_tiny_patch16"), layout="keras")


# ---------------------------------------------------------------------------------------- errors
def test_resnet_checkpoint_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    ours = create_vit("vit_tiny_patch16")
    before = snapshot(ours)
    with pytest.raises(ValueError, match=r"conv1\.weight") as auto:
        load_pretrained(ours, path)
    assert str(path) in str(auto.value)
    with pytest.raises(ValueError) as forced:
        load_pretrained(ours, path, layout="timm")
    message = str(forced.value)
    assert str(path) in message and "\n" not in message
    assert "missing" in message and "patch_embed.proj.weight" in message
    assert "unexpected" in message and "conv1.weight" in message
    assert_same_state(ours, before)


def test_vit_small_into_vit_tiny_names_key_and_shapes(tmp_path: Path) -> None:
    torch.manual_seed(12)
    path = tmp_path / "vit_small.safetensors"
    save_file(fresh_copy(timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()), path)
    ours = create_vit("vit_tiny_patch16")
    before = snapshot(ours)
    with pytest.raises(ValueError) as error:
        load_pretrained(ours, path)
    message = str(error.value)
    assert "cls_token" in message and "(1, 1, 384)" in message and "(1, 1, 192)" in message
    assert str(path) in message
    assert_same_state(ours, before)


def test_patch_size_mismatch_is_an_error(tmp_path: Path) -> None:
    torch.manual_seed(13)
    path = tmp_path / "vit_tiny_patch32.safetensors"
    save_file(fresh_copy(timm.create_model("vit_tiny_patch16_224", patch_size=32, pretrained=False).state_dict()), path)
    ours = create_vit("vit_tiny_patch16")
    before = snapshot(ours)
    with pytest.raises(ValueError, match="32x32 in the checkpoint but 16x16"):
        load_pretrained(ours, path)
    assert_same_state(ours, before)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on our garbage bytes
@pytest.mark.parametrize("name", ["corrupt.pth", "corrupt.safetensors", "corrupt.npz", "weights.txt"])
def test_unreadable_files_are_one_line_errors_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x80\x04 this is not a checkpoint " * 8)
    ours = create_vit("vit_tiny_patch16")
    before = snapshot(ours)
    with pytest.raises(ValueError) as error:
        load_pretrained(ours, path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert_same_state(ours, before)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(create_vit("vit_tiny_patch16"), tmp_path / "nowhere.pth")


# ---------------------------------------------------------------------------------------- Hugging Face eps
def hf_vit_with_eps(eps: float) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        image_size=32, patch_size=8, num_labels=10, layer_norm_eps=eps,
    )
    torch.manual_seed(0)
    return randomize_(ViTForImageClassification(config), seed=4)


def test_hf_folder_layer_norm_eps_warns_on_mismatch_and_matches_with_its_eps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vit_backbone import BackboneConfig, build_backbone

    reference = hf_vit_with_eps(1e-12).eval()
    reference.save_pretrained(tmp_path / "hf")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=images).logits
    size = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
    # The folder itself and the weights file in it both read config.json.
    for pretrained in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="vit_backbone"):
            wrong = build_backbone(BackboneConfig(preset="vit_tiny_patch16", **size, pretrained=str(pretrained)),
                                   num_classes=10, config_key="model.backbone").eval()
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, warnings
        assert "layer_norm_eps=1e-12" in warnings[0] and "model.backbone.norm_eps=1e-06" in warnings[0]
        assert "set model.backbone.norm_eps=1e-12" in warnings[0]
        with torch.no_grad():
            assert not torch.allclose(wrong(images), expected, atol=1e-5, rtol=1e-5)

        caplog.clear()
        with caplog.at_level("WARNING", logger="vit_backbone"):
            right = build_backbone(BackboneConfig(preset="vit_tiny_patch16", **size, norm_eps=1e-12,
                                                  pretrained=str(pretrained)), num_classes=10).eval()
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        with torch.no_grad():
            torch.testing.assert_close(right(images), expected, **TOL)


def test_checkpoint_without_config_json_gives_no_eps_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vit_backbone import BackboneConfig, build_backbone
    from vit_backbone.weights import hf_layer_norm_eps

    reference = hf_vit_with_eps(1e-6)
    save_file(fresh_copy(reference.state_dict()), tmp_path / "weights.safetensors")
    assert hf_layer_norm_eps(tmp_path / "weights.safetensors") is None
    (tmp_path / "config.json").write_text("not json")
    assert hf_layer_norm_eps(tmp_path / "weights.safetensors") is None
    size = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
    with caplog.at_level("WARNING", logger="vit_backbone"):
        build_backbone(BackboneConfig(preset="vit_tiny_patch16", **size,
                                      pretrained=str(tmp_path / "weights.safetensors")), num_classes=10)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="without a weights file"):
        build_backbone(BackboneConfig(preset="vit_tiny_patch16", **size, pretrained=str(empty)), num_classes=10)
