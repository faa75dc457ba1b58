"""`vit_backbone.BackboneConfig` / `build_backbone`, nested as ``model.backbone`` in every task's config.

Each backbone option is set through each task's config (as a command-line override would set it)
and looked for on the module the task's own builder returns, so a task cannot silently drop one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vit_backbone import BackboneConfig, VisionTransformer, build_backbone, create_vit
from vit_backbone.drop_path import DropPath
from vit_backbone.layer_scale import LayerScale
from vit_classification.config import ClassificationConfig
from vit_classification.model import build_classifier
from vit_detection.config import DetectionConfig
from vit_detection.model import build_detector
from vit_segmentation.config import SegmentationConfig
from vit_segmentation.model import build_transunet
from vit_training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"classification": ClassificationConfig, "detection": DetectionConfig, "segmentation": SegmentationConfig}
YAMLS = sorted((ROOT / "configs").glob("*/*.yaml"))

# Per task: overrides for a tiny model with that task's head, the builder, the ViT inside the built
# model, and an input batch for a forward pass.
TinyTask = tuple[list[str], Callable[..., nn.Module], Callable[[nn.Module], VisionTransformer], Callable[[], tuple]]
TASKS: dict[str, TinyTask] = {
    "classification": (
        ["model.backbone.preset=vit_micro_patch4_28", "model.backbone.embed_dim=32", "model.backbone.depth=2",
         "model.backbone.num_heads=2", "model.num_classes=3"],
        build_classifier,
        lambda model: model,
        lambda: (torch.randn(2, 1, 28, 28),),
    ),
    "detection": (
        ["model.backbone.preset=vit_micro_patch4_28", "model.backbone.patch_size=8", "model.backbone.img_size=32",
         "model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
         "model.num_classes=2", "model.hidden_dim=16", "model.num_heads=2", "model.dim_feedforward=32",
         "model.num_queries=4", "model.enc_layers=1", "model.dec_layers=1"],
        build_detector,
        lambda model: model.backbone,
        lambda: (torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool)),
    ),
    "segmentation": (
        ["model.backbone.preset=vit_base_r50_s16", "model.backbone.hybrid_layers=[1,1]",
         "model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
         "model.backbone.img_size=[32,32]", "model.backbone.in_chans=1", "model.num_classes=3", "model.n_skip=2",
         "model.decoder_channels=[8,8,8]", "model.head_channels=8", "data.input_size=[32,32]"],
        build_transunet,
        lambda model: model.backbone,
        lambda: (torch.randn(2, 1, 32, 32),),
    ),
}


def build(task: str, *overrides: str, load_weights: bool = True) -> tuple[nn.Module, VisionTransformer]:
    base, builder, vit_of, _ = TASKS[task]
    config = load_config(SCHEMAS[task], None, [*base, *overrides])
    model = builder(config.model, load_weights=load_weights)
    return model, vit_of(model)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads_with_a_backbone_section(path: Path) -> None:
    config = load_config(SCHEMAS[path.parent.name], path)
    assert isinstance(config.model.backbone, BackboneConfig)
    assert path.read_text().count("\n  backbone:\n") == 1, "the backbone keys sit under model.backbone"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_backbone_option_reaches_the_built_model(task: str) -> None:
    _, vit = build(
        task, "model.backbone.grad_checkpointing=true", "model.backbone.attn_kernel=manual",
        "model.backbone.init_values=0.01", "model.backbone.qk_norm=true", "model.backbone.norm_eps=1e-5",
        "model.backbone.reg_tokens=2", "model.backbone.drop_path_rate=0.2", "model.backbone.qkv_bias=false",
        "model.backbone.mlp_ratio=2.0",
    )
    assert vit.grad_checkpointing is True
    assert vit.num_reg_tokens == 2 and vit.reg_token.shape == (1, 2, 32)
    for block in vit.blocks:
        assert block.attn.kernel == "manual"
        assert isinstance(block.ls1, LayerScale) and isinstance(block.ls2, LayerScale)
        assert torch.allclose(block.ls1.gamma, torch.full((32,), 0.01))
        assert isinstance(block.attn.q_norm, nn.LayerNorm) and isinstance(block.attn.k_norm, nn.LayerNorm)
        assert block.norm1.eps == 1e-5 and block.attn.q_norm.eps == 1e-5
        assert block.attn.qkv.bias is None
        assert block.mlp.fc1.out_features == 64  # 2.0 x 32
    # Stochastic depth grows linearly to drop_path_rate at the last block.
    last = vit.blocks[-1].drop_path1
    assert isinstance(last, DropPath) and last.drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_defaults_build_a_plain_backbone(task: str) -> None:
    _, vit = build(task)
    assert vit.grad_checkpointing is False and vit.num_reg_tokens == 0
    block = vit.blocks[0]
    assert block.attn.kernel == "auto" and isinstance(block.ls1, nn.Identity)
    assert isinstance(block.attn.q_norm, nn.Identity) and isinstance(block.drop_path1, nn.Identity)
    assert block.norm1.eps == 1e-6


@pytest.mark.parametrize("task", sorted(TASKS))
def test_grad_checkpointing_recomputes_the_blocks_in_the_backward_pass(task: str) -> None:
    model, vit = build(task, "model.backbone.grad_checkpointing=true")
    calls = []
    # A pre-hook: the recomputation may stop early, once the saved tensors it needs are back.
    vit.blocks[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    model.train()
    output = model(*TASKS[task][3]())
    loss = sum(value.float().sum() for value in output.values() if torch.is_tensor(value)) if isinstance(
        output, dict) else output.float().sum()
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2, "the first block ran again in the backward pass"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pretrained_weights_load_through_every_task(task: str, tmp_path: Path) -> None:
    # Segmentation refuses a 1-channel encoder with ImageNet-style (RGB) weights.
    rgb = ["model.backbone.in_chans=3"] if task == "segmentation" else []
    _, fresh = build(task, *rgb, load_weights=False)
    preset = "vit_base_r50_s16" if task == "segmentation" else "vit_micro_patch4_28"
    grid = fresh.grid_size
    source = create_vit(preset, num_classes=10, embed_dim=32, depth=2, num_heads=2, in_chans=fresh.in_chans,
                        patch_size=fresh.patch_size, img_size=(grid[0] * fresh.patch_size, grid[1] * fresh.patch_size),
                        hybrid_layers=(1, 1) if task == "segmentation" else None)
    path = tmp_path / "vit.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(path))
    _, vit = build(task, *rgb, f"model.backbone.pretrained={path}")
    assert torch.equal(vit.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert torch.equal(vit.pos_embed, source.pos_embed)
    _, vit = build(task, *rgb, f"model.backbone.pretrained={path}", load_weights=False)
    assert not torch.equal(vit.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("key", ["preset", "drop_path_rate", "grad_checkpointing", "pretrained"])
def test_an_old_flat_model_key_names_where_it_moved(task: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key 'model\.{key}'.*did you mean 'model\.backbone\.{key}'\?$"):
        load_config(SCHEMAS[task], None, [f"model.{key}=1"])


def test_moved_keys_outside_the_backbone_name_their_new_place() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'data\.num_classes'.*did you mean 'model\.num_classes'\?$"):
        load_config(SegmentationConfig, None, ["data.num_classes=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'model\.nheads'.*did you mean 'num_heads'\?$"):
        load_config(DetectionConfig, None, ["model.nheads=4"])


def test_a_flat_yaml_fails_on_one_line_with_the_hint(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  preset: vit_tiny_patch16\n  drop_path_rate: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(DetectionConfig, path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: unknown key 'model.preset'")
    assert message.endswith("did you mean 'model.backbone.preset'?")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "vit_nope"}, "preset='vit_nope' is not a vit_backbone preset"),
        ({"attn_kernel": "flash"}, "attn_kernel='flash' is not one of auto, sdpa, manual"),
        ({"pos_embed": "rope"}, "pos_embed='rope' is not one of learn, sincos1d, sincos2d, none"),
        ({"global_pool": "max"}, "global_pool='max' is not one of token, avg, none"),
        ({"pretrained_layout": "onnx"}, "pretrained_layout='onnx' is not one of"),
        ({"depth": 0}, r"depth=0 must be >= 1"),
        ({"img_size": [32, 32, 3]}, r"img_size=\[32, 32, 3\] must be a side >= 1 or \[height, width\]"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate=1.0 must lie in \[0, 1\)"),
        ({"init_values": 0.0}, "init_values=0.0 must be > 0"),
        ({"reg_tokens": -1}, "reg_tokens=-1 must be >= 0"),
        ({"norm_eps": 0.0}, "norm_eps=0.0 must be > 0"),
        ({"class_token": False}, "global_pool='token' needs class_token=true"),
        ({"conv_stem": [8, 16], "hybrid_layers": [1, 1]}, "hybrid_layers=.* and conv_stem=.* both replace"),
        ({"conv_stem": [8, 16], "patch_size": 8}, r"patch_size=8 must equal the conv_stem's stride 4"),
        ({"preset": "vit_base_r50_s16", "hybrid_layers": [1, 1], "patch_size": 16},
         "patch_size=16 must equal the stride 8 of hybrid_layers"),
        ({"embed_dim": 30, "num_heads": 4}, "embed_dim=30 must be divisible by num_heads=4"),
        ({"preset": "vit_base_r50_s16", "patch_size": 8}, "patch_size=8 must equal the stride 16 of preset"),
        ({"preset": "vit_tiny_patch16", "img_size": [224, 100]}, r"img_size=\[224, 100\] is not divisible by the patch size 16"),
    ],
)
def test_backbone_config_checks_its_own_fields(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        BackboneConfig(**kwargs)


def test_backbone_config_errors_carry_the_dotted_path_when_loaded() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone\.depth=0 must be >= 1"):
        load_config(ClassificationConfig, None, ["model.backbone.depth=0"])
    with pytest.raises(ConfigError, match=r"model\.backbone\.global_pool='none' gives one prediction per token"):
        load_config(ClassificationConfig, None, ["model.backbone.global_pool=none"])
    with pytest.raises(ConfigError, match=r"model\.backbone\.in_chans=1 must be 3 \(detection reads RGB images\)"):
        load_config(DetectionConfig, None, ["model.backbone.in_chans=1"])
    with pytest.raises(ConfigError, match=r"model\.backbone\.attn_kernel: 'flash' is not one of auto, sdpa, manual"):
        load_config(DetectionConfig, None, ["model.backbone.attn_kernel=flash"])


def test_build_backbone_resolves_the_preset_and_its_overrides() -> None:
    config = BackboneConfig(preset="vit_base_r50_s16", hybrid_layers=[1, 1], embed_dim=32, depth=1, num_heads=2,
                            img_size=[32, 48])
    assert config.resolved_patch_size == 8  # the CNN's stride, not the preset's 16
    vit = build_backbone(config)
    assert vit.patch_size == 8 and vit.grid_size == (4, 6) and vit.num_classes == 0
    plain = build_backbone(BackboneConfig(preset="vit_micro_patch4_28", conv_stem=[8, 16], embed_dim=16,
                                          depth=1, num_heads=2), num_classes=5)
    assert plain.patch_size == 4 and plain.in_chans == 1 and plain.head.out_features == 5
    with pytest.raises(FileNotFoundError, match=r"model\.backbone\.pretrained='missing\.pth': no such file"):
        build_backbone(BackboneConfig(preset="vit_micro_patch4_28", pretrained="missing.pth"))
