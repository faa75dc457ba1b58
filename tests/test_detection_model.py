"""The detector of vit_detection: shapes, padding invariance (backbone and whole model), denoising
queries, and a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from vit_backbone import create_vit
from vit_backbone.vit import valid_grid_token_mask
from vit_detection.criterion import SetCriterion
from vit_detection.detr import (
    DETR,
    build_denoising_queries,
    denoising_attention_mask,
    host_token_padding,
    token_padding,
)
from vit_detection.matcher import HungarianMatcher
from vit_detection.neck import SimpleFeaturePyramid
from vit_detection.position_encoding import PositionEmbeddingSine, box_sine_embedding
from vit_detection.transformer import ConditionalCrossAttention, MultiheadAttention

NUM_CLASSES = 3


def tiny_vit(**overrides):
    kwargs = {"in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}
    kwargs.update(overrides)
    return create_vit("vit_micro_patch4_28", **kwargs)


def tiny_detr(**overrides) -> DETR:
    kwargs = {"neck": "single", "hidden_dim": 32, "num_queries": 8, "enc_layers": 1, "dec_layers": 3,
              "nheads": 2, "dim_feedforward": 64}
    kwargs.update(overrides)
    return DETR(tiny_vit(), NUM_CLASSES, **kwargs)


def pad_into(image: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, h, w) -> a (1, 3, height, width) canvas of noise (padding content must not matter) and its mask."""
    canvas = torch.randn(1, 3, height, width)
    canvas[0, :, : image.shape[1], : image.shape[2]] = image
    mask = torch.ones(1, height, width, dtype=torch.bool)
    mask[0, : image.shape[1], : image.shape[2]] = False
    return canvas, mask


def sample_targets() -> list[dict]:
    return [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


# ---------------------------------------------------------------------- backbone padding
@pytest.mark.parametrize(("pos_embed", "no_embed_class"),
                         [("learn", False), ("learn", True), ("sincos2d", False), ("sincos1d", False)])
def test_vit_valid_grids_give_the_unpadded_tokens(pos_embed: str, no_embed_class: bool) -> None:
    model = tiny_vit(pos_embed=pos_embed, no_embed_class=no_embed_class, num_classes=0).eval()
    small, other = torch.randn(3, 20, 12), torch.randn(3, 28, 32)
    batch = torch.randn(2, 3, 28, 32)  # noise in the padding: it must not leak
    batch[0, :, :20, :12] = small
    batch[1] = other
    grids = [(5, 3), (7, 8)]
    with torch.no_grad():
        padded = model.forward_features(batch, valid_grids=grids)
        alone = model.forward_features(small[None])
        full = model.forward_features(other[None])
        [block] = model.forward_intermediates(batch, [0], valid_grids=grids)
        [block_alone] = model.forward_intermediates(small[None], [0])
    valid = padded.patch_tokens[0].reshape(7, 8, -1)[:5, :3].reshape(15, -1)
    torch.testing.assert_close(valid, alone.patch_tokens[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.cls_token[0], alone.cls_token[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.patch_tokens[1], full.patch_tokens[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(block[0, :, :5, :3], block_alone[0], atol=1e-5, rtol=0)


def test_valid_grid_token_mask_and_bad_grids() -> None:
    mask = valid_grid_token_mask([(1, 2), (2, 3)], (2, 3))
    assert mask.tolist() == [[True, True, False, False, False, False], [True] * 6]
    model = tiny_vit()
    with pytest.raises(ValueError, match=r"valid_grids\[1\]=\(9, 1\)"):
        model.forward_features(torch.randn(2, 3, 28, 32), valid_grids=[(7, 8), (9, 1)])
    with pytest.raises(ValueError, match="valid_grids has 1 entries for a batch of 2"):
        model.forward_features(torch.randn(2, 3, 28, 32), valid_grids=[(7, 8)])


def test_token_padding_rounds_up_and_rejects_holes() -> None:
    mask = torch.ones(2, 16, 16, dtype=torch.bool)
    mask[0, :9, :5] = False  # 9 x 5 pixels -> ceil: 3 x 2 tokens of 4 px
    mask[1] = False
    token_pad, grids = token_padding(mask, 4)
    assert grids == [(3, 2), (4, 4)] and token_pad.shape == (2, 4, 4)
    assert token_pad[0, :3, :2].logical_not().all() and token_pad[0, 3:].all()
    holed = torch.zeros(1, 16, 16, dtype=torch.bool)
    holed[0, 4, 4] = True
    with pytest.raises(ValueError, match="pad_mask of image 0 is not a top-left rectangle"):
        token_padding(holed, 4)


def test_host_token_padding_equals_the_device_read() -> None:
    sizes = [(9, 5), (16, 16), (1, 13)]
    mask = torch.ones(3, 16, 16, dtype=torch.bool)
    for index, (h, w) in enumerate(sizes):
        mask[index, :h, :w] = False
    token_pad, grids = token_padding(mask, 4)
    host_pad, host_grids = host_token_padding(mask, 4, sizes)
    assert host_grids == grids == [(3, 2), (4, 4), (1, 4)]
    assert torch.equal(host_pad, token_pad)
    with pytest.raises(ValueError, match="image_sizes has 2 entries for a batch of 3"):
        host_token_padding(mask, 4, sizes[:2])
    with pytest.raises(ValueError, match=r"image_sizes\[1\]=\(17, 4\) does not fit the padded batch of 16 x 16"):
        host_token_padding(mask, 4, [(9, 5), (17, 4), (1, 13)])


def test_detr_gives_the_same_outputs_with_host_sizes() -> None:
    torch.manual_seed(0)
    model = tiny_detr(neck="simple_fpn", query_type="anchor", two_stage=True).eval()
    images = torch.randn(2, 3, 32, 40)
    mask = torch.ones(2, 32, 40, dtype=torch.bool)
    mask[0, :20, :40] = False
    mask[1, :32, :17] = False
    with torch.no_grad():
        read = model(images, mask)
        given = model(images, mask, image_sizes=[(20, 40), (32, 17)])
    torch.testing.assert_close(given["pred_logits"], read["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(given["pred_boxes"], read["pred_boxes"], rtol=0, atol=0)


# ---------------------------------------------------------------------- position encodings
def test_sine_positions_depend_on_the_valid_extent_only() -> None:
    encode = PositionEmbeddingSine(8)
    mask = torch.zeros(1, 6, 5, dtype=torch.bool)
    padded = torch.ones(1, 9, 7, dtype=torch.bool)
    padded[0, :6, :5] = False
    torch.testing.assert_close(encode(padded)[..., :6, :5], encode(mask))
    # Cell centres: the encoding of cell (i, j) equals the anchor embedding of its centre.
    boxes = torch.tensor([[(2 + 0.5) / 5, (3 + 0.5) / 6, 0.1, 0.1]])
    torch.testing.assert_close(box_sine_embedding(boxes, 8)[0, :16], encode(mask)[0, :, 3, 2], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- attention
@pytest.mark.parametrize("kernel", ["sdpa", "manual"])
def test_attention_matches_torch_multihead_attention(kernel: str) -> None:
    ours = MultiheadAttention(16, 4, kernel=kernel).eval()
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    query, key, value = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 4:] = True
    blocked = torch.rand(5, 7) < 0.3
    blocked[:, 0] = False  # every query keeps a key
    with torch.no_grad():
        expected, _ = reference(query, key, value, key_padding_mask=padding, attn_mask=blocked, need_weights=False)
        got = ours(query, key, value, key_padding_mask=padding, attn_mask=blocked)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("first_layer", [True, False])
def test_conditional_cross_attention_separates_content_and_position(first_layer: bool) -> None:
    attention = ConditionalCrossAttention(8, 2, kernel="manual").double()
    query, query_pos, spatial = (torch.randn(1, 3, 8, dtype=torch.float64) for _ in range(3))
    memory, memory_pos = torch.randn(1, 5, 8, dtype=torch.float64), torch.randn(1, 5, 8, dtype=torch.float64)
    padding = torch.tensor([[False, False, False, False, True]])
    out = attention(query, query_pos, spatial, memory, memory_pos, padding, first_layer)
    q_content = attention.q_content(query) + (attention.q_pos(query_pos) if first_layer else 0)
    k_pos = attention.k_pos(memory_pos)
    k_content = attention.k_content(memory) + (k_pos if first_layer else 0)
    q_spatial, values = attention.q_spatial(spatial), attention.v_proj(memory)
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        # per head: content . content + spatial . position, scaled by the concatenated width 8
        logits = (q_content[0, :, part] @ k_content[0, :, part].T + q_spatial[0, :, part] @ k_pos[0, :, part].T) / 8**0.5
        logits[:, 4] = float("-inf")
        heads.append(logits.softmax(-1) @ values[0, :, part])
    expected = attention.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(out[0], expected)


# ---------------------------------------------------------------------- model
@pytest.mark.parametrize("neck", ["single", "simple_fpn"])
@pytest.mark.parametrize(("query_type", "aux_loss"), [("learned", True), ("learned", False), ("anchor", True)])
def test_forward_shapes(neck: str, query_type: str, aux_loss: bool) -> None:
    model = tiny_detr(neck=neck, query_type=query_type, aux_loss=aux_loss)
    outputs = model(torch.randn(2, 3, 24, 32))
    assert outputs["pred_logits"].shape == (2, 8, NUM_CLASSES + 1)
    assert outputs["pred_boxes"].shape == (2, 8, 4)
    assert ((outputs["pred_boxes"] > 0) & (outputs["pred_boxes"] < 1)).all()
    if aux_loss:
        assert len(outputs["aux_outputs"]) == 2
        assert all(aux["pred_logits"].shape == (2, 8, NUM_CLASSES + 1) for aux in outputs["aux_outputs"])
    else:
        assert "aux_outputs" not in outputs
    assert "dn_outputs" not in outputs


def test_forward_keeps_attention_off_cudnn_and_restores_the_backends() -> None:
    # cuDNN's SDPA rebuilds its graph for every new input shape (slow on GPUs for a detector's
    # varied image sizes): the backbone and the transformer must both run with it disabled.
    seen: dict[str, bool] = {}

    def record(name: str):
        def hook(_module, _inputs) -> None:
            seen[name] = torch.backends.cuda.cudnn_sdp_enabled()
        return hook

    model = tiny_detr()
    model.backbone.blocks[0].register_forward_pre_hook(record("backbone"))
    model.decoder.register_forward_pre_hook(record("decoder"))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    outputs = model(torch.randn(2, 3, 24, 32))
    outputs["pred_boxes"].sum().backward()
    assert seen == {"backbone": False, "decoder": False}
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_simple_fpn_strides_come_from_the_backbone_specs() -> None:
    model = tiny_detr(neck="simple_fpn")
    assert isinstance(model.neck, SimpleFeaturePyramid) and model.neck.strides == (2, 4, 8)
    levels = model.neck(torch.randn(1, 32, 7, 5), torch.zeros(1, 7, 5, dtype=torch.bool))
    assert [tuple(level.shape[-2:]) for level, _ in levels] == [(14, 10), (7, 5), (4, 3)]


@pytest.mark.parametrize("neck", ["single", "simple_fpn"])
@pytest.mark.parametrize(("query_type", "two_stage"), [("learned", False), ("anchor", False), ("anchor", True)])
def test_padding_does_not_change_predictions(neck: str, query_type: str, two_stage: bool) -> None:
    model = tiny_detr(neck=neck, query_type=query_type, two_stage=two_stage, enc_layers=2).eval()
    image = torch.randn(3, 20, 28)  # a 5 x 7 token grid: odd, so pooling meets the border
    canvas, mask = pad_into(image, 36, 44)
    with torch.no_grad():
        alone = model(image[None])
        padded = model(torch.cat([canvas, torch.randn(1, 3, 36, 44)]),
                       torch.cat([mask, torch.zeros(1, 36, 44, dtype=torch.bool)]))
    torch.testing.assert_close(padded["pred_logits"][0], alone["pred_logits"][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(padded["pred_boxes"][0], alone["pred_boxes"][0], atol=1e-4, rtol=0)


def test_backbone_feature_from_a_block_trims_unused_parts() -> None:
    model = DETR(tiny_vit(depth=3), NUM_CLASSES, hidden_dim=32, num_queries=4, enc_layers=1, dec_layers=2,
                 nheads=2, dim_feedforward=32, backbone_feature="blocks.1")
    assert len(model.backbone.blocks) == 2
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher())
    criterion.total(criterion(model(torch.randn(2, 3, 16, 16)), sample_targets())).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(ValueError, match="backbone_feature='stem'"):
        DETR(tiny_vit(), NUM_CLASSES, backbone_feature="stem")


@pytest.mark.parametrize("class_score", ["softmax", "sigmoid"])
def test_two_stage_queries_are_the_best_encoder_proposals(class_score: str) -> None:
    model = tiny_detr(query_type="anchor", two_stage=True, dn_groups=2, dropout=0.0, class_score=class_score)
    num_logits = NUM_CLASSES + 1 if class_score == "softmax" else NUM_CLASSES
    images = torch.randn(2, 3, 16, 24)
    mask = torch.zeros(2, 16, 24, dtype=torch.bool)
    mask[1, :, 16:] = True  # image 1 is 16 x 16: its last 2 of 6 token columns are padding
    outputs = model(images, mask, targets=sample_targets())
    enc = outputs["enc_outputs"]
    assert enc["pred_logits"].shape == (2, 24, num_logits) and enc["pred_boxes"].shape == (2, 24, 4)
    assert outputs["pred_logits"].shape == (2, 8, num_logits)
    assert enc["pred_valid"].sum(1).tolist() == [24, 16]
    # Proposals start as the cells' reference boxes (zero-initialised corrections): cell (0, 0)
    # of image 1 is centred at half a cell of its own 4 x 4 valid grid and two cells wide.
    torch.testing.assert_close(enc["pred_boxes"][1, 0], torch.tensor([0.125, 0.125, 0.5, 0.5]))
    # Layer 0 of the decoder predicts its anchors unchanged: they are proposals of valid cells
    # with the highest object scores.
    if class_score == "softmax":
        prob = enc["pred_logits"].softmax(-1)[..., :-1]
    else:  # one sigmoid per class, every head starting at probability 0.01 (RetinaNet's prior)
        prob = enc["pred_logits"].sigmoid()
        for head in (model.class_head, model.enc_class_head):
            torch.testing.assert_close(head.bias.sigmoid(), torch.full((NUM_CLASSES,), 0.01))
    scores = prob.amax(-1).masked_fill(~enc["pred_valid"], -1)
    for image in range(2):
        chosen = outputs["aux_outputs"][0]["pred_boxes"][image]
        best = enc["pred_boxes"][image][scores[image].topk(8).indices]
        torch.testing.assert_close(chosen, best)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(class_score=class_score), class_score=class_score)
    losses = criterion(outputs, sample_targets())
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)
    criterion.total(losses).backward()
    # Every parameter takes part in the loss (DDP needs it), the encoder heads included.
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(ValueError, match="only 4 valid cells"):
        model(torch.randn(1, 3, 8, 8))


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="two_stage=True .* needs query_type='anchor'"):
        tiny_detr(two_stage=True)
    with pytest.raises(ValueError, match="needs query_type='anchor'"):
        tiny_detr(dn_groups=2)
    with pytest.raises(ValueError, match="neck='fpn'"):
        tiny_detr(neck="fpn")
    with pytest.raises(ValueError, match="class_score='focal' is not one of"):
        tiny_detr(class_score="focal")
    with pytest.raises(ValueError, match="pad_mask has shape"):
        tiny_detr()(torch.randn(1, 3, 16, 16), torch.zeros(1, 8, 8, dtype=torch.bool))


# ---------------------------------------------------------------------- denoising
def test_denoising_queries_and_attention_mask() -> None:
    targets = sample_targets()
    labels, boxes, valid, group_size = build_denoising_queries(targets, 3, NUM_CLASSES, 0.0, 0.0, torch.device("cpu"))
    assert group_size == 2 and labels.shape == (2, 6) and boxes.shape == (2, 6, 4)
    assert labels[1].tolist() == [1, NUM_CLASSES] * 3 and valid[1].tolist() == [True, False] * 3
    torch.testing.assert_close(boxes[0, 2:4], targets[0]["boxes"])
    blocked = denoising_attention_mask(valid, 3, num_queries=4)
    assert blocked.shape == (2, 10, 10)
    assert blocked[:, 6:, :6].all()  # matching queries never see denoising ones
    assert not blocked[0, :6, 6:].any()  # denoising queries see the matching ones
    assert blocked[0, 0, 2:6].all() and not blocked[0, 0, :2].any()  # groups are separate
    assert blocked[1, :, 1].all()  # nobody looks at a padding slot
    _, noisy, _, _ = build_denoising_queries(targets, 3, NUM_CLASSES, 0.0, 0.4, torch.device("cpu"))
    assert not torch.equal(noisy[valid], boxes[valid]) and (noisy >= 0).all() and (noisy <= 1).all()


def test_denoising_queries_only_in_training_and_invisible_to_matching_queries() -> None:
    model = tiny_detr(query_type="anchor", dn_groups=2, dropout=0.0)
    images = torch.randn(2, 3, 16, 24)
    targets = sample_targets()
    outputs = model(images, targets=targets)
    assert outputs["dn_outputs"]["pred_boxes"].shape == (2, 4, 4) and outputs["dn_meta"]["group_size"] == 2
    assert len(outputs["dn_outputs"]["aux_outputs"]) == 2
    other = [{"labels": torch.tensor([1, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]] * 2)}, targets[1]]
    changed = model(images, targets=other)
    torch.testing.assert_close(changed["pred_logits"], outputs["pred_logits"])
    torch.testing.assert_close(changed["pred_boxes"], outputs["pred_boxes"])
    model.eval()
    assert "dn_outputs" not in model(images, targets=targets)


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize(("query_type", "dn_groups", "two_stage", "class_score"),
                         [("learned", 0, False, "softmax"), ("anchor", 2, False, "softmax"),
                          ("anchor", 2, True, "softmax"), ("anchor", 2, True, "sigmoid")])
def test_tiny_overfit_makes_the_loss_fall(query_type: str, dn_groups: int, two_stage: bool, class_score: str) -> None:
    model = tiny_detr(query_type=query_type, dn_groups=dn_groups, two_stage=two_stage, dropout=0.0,
                      class_score=class_score)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(class_score=class_score), class_score=class_score)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[1, 12:] = True  # the second image is 12 x 16, padded
    targets = sample_targets()
    history = []  # the last decoder layer's weighted loss (denoising terms are noisy by design)
    for _ in range(50):
        losses = criterion(model(images, mask, targets), targets)
        total = criterion.total(losses)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(sum(criterion.weight_of(k) * losses[k].item() for k in ("loss_ce", "loss_bbox", "loss_giou")))
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:5]) / 5, history


@pytest.mark.parametrize("neck", ["single", "simple_fpn"])
def test_host_count_of_valid_cells_equals_the_level_masks(neck: str) -> None:
    """`Encoded.min_valid_cells` (host arithmetic) equals the count of valid cells in the mask, odd grids included."""
    torch.manual_seed(0)
    model = tiny_detr(neck=neck, query_type="anchor", two_stage=True, num_queries=4).eval()
    images = torch.randn(3, 3, 36, 44)
    sizes = [(36, 44), (21, 13), (9, 30)]  # token grids (9, 11), (6, 4), (3, 8) at patch 4
    mask = torch.ones(3, 36, 44, dtype=torch.bool)
    for index, (h, w) in enumerate(sizes):
        mask[index, :h, :w] = False
    with torch.no_grad():
        given = model.encode(images, mask, sizes)
        read = model.encode(images, mask)
        whole = model.encode(images)
    counted = (~given.mask).sum(1)
    assert given.min_valid_cells == read.min_valid_cells == int(counted.min())
    for index, (h, w) in enumerate(sizes):
        grid = (-(-h // 4), -(-w // 4))
        assert model.neck.valid_cells(grid) == int(counted[index])
    assert whole.min_valid_cells == whole.mask.shape[1]
    assert tiny_detr(neck=neck).eval().encode(images, mask, sizes).min_valid_cells is None  # not two-stage
