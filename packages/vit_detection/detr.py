"""The detector: ViT backbone -> neck -> transformer encoder-decoder -> class and box heads.

    images (B, 3, H, W), pad_mask (B, H, W)
      -> ViT patch tokens (B, C, H/p, W/p), padded tokens hidden, per-image position embedding
      -> neck: one level (DETR) or a simple feature pyramid (ViTDet), d channels each
      -> encoder over all levels' cells (+ sine positions, + level embedding)
      -> decoder: Q learned object queries (DETR) or Q anchor boxes refined per layer (DAB-DETR),
         optionally the Q best proposals of the encoder cells (two-stage query selection),
         plus, in training, denoising queries built from the targets (DN-DETR)
      -> class logits (B, Q, C + 1) and boxes (B, Q, 4) per decoder layer

Conventions at the boundary:

* `images` are padded bottom/right to a common size; `pad_mask` is True on padding pixels.
  A patch is valid when its top-left pixel is, so an image of h x w pixels has a valid token
  grid of ceil(h / p) x ceil(w / p) (the data pipeline pads each image to a multiple of p).
* `pred_boxes` are sigmoid (cx, cy, w, h) normalised by each image's own UNPADDED size, like
  the targets: all positions (memory encodings, anchors) are relative to the valid extent, so
  a prediction does not depend on how much padding its batch added.
* `pred_logits` have C + 1 columns, the last "no object" (C columns with sigmoid class
  scores, `scores`).

Padding invariance (eval mode, up to float rounding) holds for both necks with a plain ViT;
a hybrid backbone's CNN or a convolutional stem sees the padded canvas and breaks it slightly
at the bottom/right borders (and, in training, padding enters the stem's BatchNorm statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

from vit_backbone import VisionTransformer
from vit_backbone.attention import AttentionKernel, sdpa_without_cudnn

from .box_ops import inverse_sigmoid
from .neck import SimpleFeaturePyramid, SingleScaleNeck
from .position_encoding import PositionEmbeddingSine
from .scores import ClassScore, check_class_score, class_probabilities, num_class_logits, prior_bias
from .transformer import (
    MLP,
    AnchorDecoder,
    AnchorDecoderLayer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = ["DETR", "Encoded", "NeckKind", "QueryKind", "build_denoising_queries", "cell_boxes", "host_token_padding",
           "token_padding"]

NeckKind = Literal["single", "simple_fpn"]
QueryKind = Literal["learned", "anchor"]


def token_padding(pad_mask: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Token-level padding mask and per-image valid grid from a pixel padding mask.

    A patch is valid when its top-left pixel is (padding is bottom/right), so an image of
    h x w valid pixels has a ceil(h / p) x ceil(w / p) token grid.

    Args:
        pad_mask: (B, H, W) bool, True on padding pixels.
        patch_size: p.

    Returns:
        (B, ceil(H / p), ceil(W / p)) bool, True on padding tokens, and the B valid grids (h_i, w_i).

    Raises:
        ValueError: an image is all padding, or its valid pixels are not a top-left rectangle.
    """
    if pad_mask.ndim != 3 or pad_mask.dtype != torch.bool:
        raise ValueError(f"pad_mask must be a (B, H, W) bool tensor, got {tuple(pad_mask.shape)} {pad_mask.dtype}")
    valid = ~pad_mask[:, ::patch_size, ::patch_size]
    heights = valid[:, :, 0].sum(1)
    widths = valid[:, 0, :].sum(1)
    rows = torch.arange(valid.shape[1], device=valid.device)
    cols = torch.arange(valid.shape[2], device=valid.device)
    rectangle = (rows[None, :, None] < heights[:, None, None]) & (cols[None, None, :] < widths[:, None, None])
    bad = ((rectangle != valid).flatten(1).any(1) | (heights == 0) | (widths == 0)).nonzero()
    if len(bad):
        raise ValueError(
            f"pad_mask of image {int(bad[0])} is not a top-left rectangle of valid pixels padded bottom/right "
            "(or has no valid pixel)"
        )
    grids = [(int(h), int(w)) for h, w in zip(heights.tolist(), widths.tolist(), strict=True)]
    return ~valid, grids


def host_token_padding(pad_mask: torch.Tensor, patch_size: int,
                       image_sizes: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """`token_padding` from sizes known on the host: the same mask and grids, no device read.

    Args:
        pad_mask: (B, H, W) bool, True on padding pixels, made from `image_sizes` (top-left images).
        patch_size: p.
        image_sizes: B (h_i, w_i) unpadded sizes in pixels, Python ints.

    Returns:
        (B, ceil(H / p), ceil(W / p)) bool, True on padding tokens (a patch is valid when its
        top-left pixel is), and the B valid grids (ceil(h_i / p), ceil(w_i / p)).

    Raises:
        ValueError: not one size per image, or a size outside the padded batch (one line).
    """
    batch, height, width = pad_mask.shape
    if len(image_sizes) != batch:
        raise ValueError(f"image_sizes has {len(image_sizes)} entries for a batch of {batch} images")
    grids = []
    for index, (h, w) in enumerate(image_sizes):
        if not (0 < h <= height and 0 < w <= width):
            raise ValueError(f"image_sizes[{index}]=({h}, {w}) does not fit the padded batch of {height} x {width}")
        grids.append((-(-int(h) // patch_size), -(-int(w) // patch_size)))
    return pad_mask[:, ::patch_size, ::patch_size], grids


def cell_boxes(level_mask: torch.Tensor, cells_wide: float = 2.0) -> torch.Tensor:
    """One reference box per cell of a feature level, normalised by each image's valid extent.

    The two-stage proposals are predicted as corrections of these boxes: the box of cell (i, j)
    is centred on the cell and `cells_wide` cells wide and high, so every level proposes boxes
    at its own scale (Deformable DETR's two-stage uses the same idea with a fixed size per level).

    Args:
        level_mask: (B, h, w) bool, True on padding cells (padding is bottom/right).
        cells_wide: side of the reference box in cells.

    Returns:
        (B, h * w, 4) float32 cxcywh in (0, 1), row-major like the flattened level. Padding
        cells (outside the valid extent) are clamped to just inside (0, 1); they must be
        masked by the caller.
    """
    batch, height, width = level_mask.shape
    valid_h = (~level_mask[:, :, 0]).sum(1).clamp(min=1).float()  # (B,)
    valid_w = (~level_mask[:, 0, :]).sum(1).clamp(min=1).float()
    rows = torch.arange(height, device=level_mask.device, dtype=torch.float32) + 0.5
    cols = torch.arange(width, device=level_mask.device, dtype=torch.float32) + 0.5
    cy = (rows[None, :, None] / valid_h[:, None, None]).expand(batch, height, width)
    cx = (cols[None, None, :] / valid_w[:, None, None]).expand(batch, height, width)
    w = (cells_wide / valid_w)[:, None, None].expand(batch, height, width)
    h = (cells_wide / valid_h)[:, None, None].expand(batch, height, width)
    eps = 1e-4  # keeps inverse_sigmoid finite
    return torch.stack([cx, cy, w, h], dim=-1).flatten(1, 2).clamp(eps, 1 - eps)


class Encoded(NamedTuple):
    """What the encoder gives the decoder.

    Attributes:
        memory: (B, S, d) encoder outputs over all neck levels' cells.
        pos: (B, S, d) their positional encodings.
        mask: (B, S) bool, True on padding cells.
        cells: (B, S, 4) cxcywh reference box of every cell (`cell_boxes`) for two-stage
            proposals; None for a model without `two_stage` (nothing reads them).
        min_valid_cells: the fewest valid cells of any image, when known on the host (no padded
            token, or the sizes were given); None: count them from `mask` when needed.
    """

    memory: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    cells: torch.Tensor | None
    min_valid_cells: int | None = None


def build_denoising_queries(
    targets: Sequence[dict],
    num_groups: int,
    num_classes: int,
    label_noise: float,
    box_noise: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """DN-DETR's noised copies of the targets, to be reconstructed by extra decoder queries.

    Every image's T_b targets are copied into `num_groups` groups of M = max_b T_b slots (slot
    j >= T_b is padding). In each copy a label is replaced by a random class with probability
    `label_noise`, and each box edge moves by up to `box_noise` times half the box size (the
    centre by up to box_noise * w / 2, the size by up to box_noise * w), clamped to [0, 1].

    Args:
        targets: B dicts with "labels" (T_b,) and "boxes" (T_b, 4) normalised cxcywh.
        num_groups: G noised copies.
        num_classes: C; padding slots get the label C ("unknown").
        label_noise: probability of flipping a label.
        box_noise: scale of the box jitter (DN-DETR's lambda).
        device: where to build the queries.

    Returns:
        labels (B, G * M) int64, boxes (B, G * M, 4), valid (B, G * M) bool (False on padding
        slots), and M. M = 0 when no image has a target.
    """
    group_size = max((len(t["labels"]) for t in targets), default=0)
    batch = len(targets)
    labels = torch.full((batch, group_size), num_classes, dtype=torch.int64, device=device)
    boxes = torch.full((batch, group_size, 4), 0.5, dtype=torch.float32, device=device)
    valid = torch.zeros(batch, group_size, dtype=torch.bool, device=device)
    for image, target in enumerate(targets):
        count = len(target["labels"])
        labels[image, :count] = target["labels"].to(device)
        boxes[image, :count] = target["boxes"].to(device).float()
        valid[image, :count] = True
    labels = labels.repeat(1, num_groups)
    boxes = boxes.repeat(1, num_groups, 1)
    valid = valid.repeat(1, num_groups)
    if group_size == 0:
        return labels, boxes, valid, 0

    flip = (torch.rand(labels.shape, device=device) < label_noise) & valid
    labels = torch.where(flip, torch.randint_like(labels, num_classes), labels)
    if box_noise > 0:
        half_extent = torch.cat([boxes[..., 2:] / 2, boxes[..., 2:]], dim=-1)
        jitter = (torch.rand_like(boxes) * 2 - 1) * half_extent * box_noise
        boxes = (boxes + jitter).clamp(0.0, 1.0)
    return labels, boxes, valid, group_size


def denoising_attention_mask(valid: torch.Tensor, num_groups: int, num_queries: int) -> torch.Tensor:
    """(B, D + Q, D + Q) bool self-attention mask, True where a query must NOT see another.

    Queries are [D denoising (G groups of M), Q matching]. Matching queries must not see the
    denoising ones (they carry the answer); a group must not see other groups (each copy is a
    separate reconstruction task); nobody looks at padding slots. Denoising queries may see
    the matching ones, as in DN-DETR.
    """
    batch, num_dn = valid.shape
    group_size = num_dn // num_groups
    size = num_dn + num_queries
    group_of = torch.arange(num_dn, device=valid.device) // group_size
    blocked = torch.zeros(size, size, dtype=torch.bool, device=valid.device)
    blocked[num_dn:, :num_dn] = True
    blocked[:num_dn, :num_dn] = group_of[:, None] != group_of[None, :]
    blocked = blocked[None].repeat(batch, 1, 1)
    blocked[:, :, :num_dn] |= ~valid[:, None, :]
    return blocked


class DETR(nn.Module):
    """DETR on a ViT, with DAB-DETR anchor queries and DN-DETR denoising as options.

    Plain DETR (Carion et al. 2020) is the default. For fast convergence on small data use
    `query_type="anchor"` (DAB-DETR: 4-D anchors refined layer by layer) and `dn_groups > 0`
    (DN-DETR: noised ground-truth boxes as extra training queries).

    The backbone's classification head is removed (and, with a ``"blocks.N"`` feature, the
    blocks after N and the final norm), so every parameter takes part in the loss, as DDP needs.

    Args:
        backbone: the ViT; its `feature_specs()` gives the channels and stride of the map used.
        num_classes: C real classes; the class head has C + 1 outputs (last = no object), C with
            sigmoid class scores.
        neck: ``"single"`` (one level at the backbone stride) or ``"simple_fpn"`` (ViTDet).
        hidden_dim: transformer width d.
        num_queries: Q predictions per image.
        enc_layers: encoder layers (0 = no encoder).
        dec_layers: decoder layers.
        nheads: attention heads.
        dim_feedforward: hidden width of the transformer's feed-forward blocks.
        dropout: dropout in the transformer.
        aux_loss: also return every earlier decoder layer's predictions ("aux_outputs").
        pre_norm: pre-norm transformer layers (DETR's default is post-norm).
        backbone_feature: which backbone output feeds the neck: ``"norm"`` (final normed
            tokens) or ``"blocks.N"``.
        fpn_scale_factors: levels of the simple feature pyramid, relative to the backbone map.
        query_type: ``"learned"`` (DETR object queries) or ``"anchor"`` (DAB-DETR anchors with
            conditional cross-attention; see `transformer.AnchorDecoder`).
        two_stage: take the Q anchors (and their content) from the encoder instead of learning
            them: every encoder cell predicts a class and a box around itself, trained with its
            own matched loss ("enc_outputs"), and the Q cells with the highest object score give
            the decoder's initial anchors and content (Deformable DETR's two-stage, DINO's query
            selection; content from the selected features as in RT-DETR). The decoder then starts
            from boxes that already sit on objects instead of learning where objects usually
            are. Needs ``query_type="anchor"`` and at least Q valid cells per image.
        dn_groups: denoising groups in training (0 = off; needs ``query_type="anchor"``).
        dn_label_noise: probability of flipping a denoising query's label.
        dn_box_noise: box jitter scale of the denoising queries.
        attn_kernel: transformer attention kernel (see `vit_backbone.attention`).
        class_score: ``"softmax"`` (DETR: C + 1 logits) or ``"sigmoid"`` (C logits for the focal
            loss; the class heads start at probability 0.01, `scores.prior_bias`).
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        neck: NeckKind = "single",
        hidden_dim: int = 256,
        num_queries: int = 100,
        enc_layers: int = 6,
        dec_layers: int = 6,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        aux_loss: bool = True,
        pre_norm: bool = False,
        backbone_feature: str = "norm",
        fpn_scale_factors: Sequence[float] = (2.0, 1.0, 0.5),
        query_type: QueryKind = "learned",
        two_stage: bool = False,
        dn_groups: int = 0,
        dn_label_noise: float = 0.2,
        dn_box_noise: float = 0.4,
        attn_kernel: AttentionKernel = "auto",
        class_score: ClassScore = "softmax",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        check_class_score(class_score)
        if neck not in ("single", "simple_fpn"):
            raise ValueError(f"neck={neck!r} is not one of ('single', 'simple_fpn')")
        if query_type not in ("learned", "anchor"):
            raise ValueError(f"query_type={query_type!r} is not one of ('learned', 'anchor')")
        if dn_groups < 0:
            raise ValueError(f"dn_groups must be >= 0, got {dn_groups}")
        if dn_groups and query_type != "anchor":
            raise ValueError("dn_groups > 0 (denoising queries) needs query_type='anchor'")
        if two_stage and query_type != "anchor":
            raise ValueError("two_stage=True (encoder proposals as anchors) needs query_type='anchor'")
        if dec_layers < 1 or enc_layers < 0 or num_queries < 1:
            raise ValueError(
                f"need dec_layers >= 1, enc_layers >= 0, num_queries >= 1; got {dec_layers}, {enc_layers}, {num_queries}"
            )
        if hidden_dim % 4:
            raise ValueError(f"hidden_dim must be divisible by 4 (sine encodings), got {hidden_dim}")
        specs = backbone.feature_specs()
        if backbone_feature != "norm" and not backbone_feature.startswith("blocks."):
            raise ValueError(f"backbone_feature={backbone_feature!r} must be 'norm' or 'blocks.N'")
        if backbone_feature not in specs:
            choices = [name for name in specs if name == "norm" or name.startswith("blocks.")]
            raise ValueError(f"backbone_feature={backbone_feature!r} is not one of {choices}")

        self.num_classes = num_classes
        self.class_score = class_score
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.aux_loss = aux_loss
        self.query_type = query_type
        self.two_stage = two_stage
        self.dn_groups = dn_groups
        self.dn_label_noise = dn_label_noise
        self.dn_box_noise = dn_box_noise
        self.backbone_feature = backbone_feature

        self.backbone = backbone
        self._trim_backbone()
        in_spec = specs[backbone_feature]
        if neck == "single":
            self.neck: SingleScaleNeck | SimpleFeaturePyramid = SingleScaleNeck(in_spec, hidden_dim)
        else:
            self.neck = SimpleFeaturePyramid(in_spec, hidden_dim, fpn_scale_factors)
        num_levels = len(self.neck.strides)
        # Several levels share one encoder: a learned embedding per level tells them apart.
        self.level_embed = nn.Parameter(torch.zeros(num_levels, hidden_dim)) if num_levels > 1 else None
        self.position_encoding = PositionEmbeddingSine(hidden_dim // 2)

        self.encoder = TransformerEncoder(
            TransformerEncoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm, attn_kernel),
            enc_layers, final_norm=hidden_dim if pre_norm and enc_layers else None,
        )
        layer_args = (hidden_dim, nheads, dim_feedforward, dropout, pre_norm, attn_kernel)
        num_logits = num_class_logits(num_classes, class_score)
        self.class_head = nn.Linear(hidden_dim, num_logits)
        self.box_head = MLP(hidden_dim, hidden_dim, 4, 3)
        if query_type == "learned":
            self.decoder: TransformerDecoder = TransformerDecoder(
                TransformerDecoderLayer(*layer_args), dec_layers, hidden_dim
            )
            self.query_embed = nn.Embedding(num_queries, hidden_dim)
        else:
            self.decoder = AnchorDecoder(AnchorDecoderLayer(*layer_args), dec_layers, hidden_dim)
            if two_stage:
                # Per-cell proposal heads on a projection of the memory (as Deformable DETR's
                # `enc_output`): the memory also feeds cross-attention, the projection need not.
                self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
                self.enc_class_head = nn.Linear(hidden_dim, num_logits)
                self.enc_box_head = MLP(hidden_dim, hidden_dim, 4, 3)
            else:
                # Anchors are stored as logits: sigmoid keeps them in (0, 1) whatever the optimiser does.
                self.anchor_embed = nn.Embedding(num_queries, 4)
            # Row C is the content of every matching query ("unknown class"); rows 0..C-1 give
            # the content of denoising queries from their (noised) labels.
            self.label_embed = nn.Embedding(num_classes + 1, hidden_dim)
        self._reset_parameters()

    # ------------------------------------------------------------------ setup
    def _trim_backbone(self) -> None:
        """Drop backbone parts the detector never uses (DDP rejects parameters without gradients)."""
        self.backbone.reset_classifier(0)
        self.backbone.fc_norm = nn.Identity()
        if self.backbone_feature.startswith("blocks."):
            last = int(self.backbone_feature.split(".")[1])
            del self.backbone.blocks[last + 1 :]
            self.backbone.norm = nn.Identity()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # Transformer matrices: Xavier, as DETR (the attention projections init themselves).
        for module in (self.encoder, self.decoder):
            for name, param in module.named_parameters():
                if param.dim() > 1 and "_proj." not in name:
                    nn.init.xavier_uniform_(param)
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed)  # as Deformable DETR: levels distinct from the start
        if self.class_score == "sigmoid":
            for head in (self.class_head, getattr(self, "enc_class_head", None)):
                if head is not None:
                    nn.init.constant_(head.bias, prior_bias(0.01))
        if self.query_type == "anchor":
            # Start each refinement at zero: layer 0 predicts the anchors themselves.
            nn.init.zeros_(self.box_head.layers[-1].weight)
            nn.init.zeros_(self.box_head.layers[-1].bias)
            if self.two_stage:
                # Likewise the proposals start as the cells' reference boxes.
                nn.init.zeros_(self.enc_box_head.layers[-1].weight)
                nn.init.zeros_(self.enc_box_head.layers[-1].bias)
            else:
                # Anchor centres spread uniformly over the image, sizes 0.1-0.3 of it.
                centres = torch.rand(self.num_queries, 2)
                sizes = 0.1 + 0.2 * torch.rand(self.num_queries, 2)
                self.anchor_embed.weight.copy_(inverse_sigmoid(torch.cat([centres, sizes], dim=1)))

    # ------------------------------------------------------------------ encode
    def _backbone_map(self, images: torch.Tensor, valid_grids: list[tuple[int, int]] | None) -> torch.Tensor:
        """Images -> (B, C, H/p, W/p) map of the chosen backbone output."""
        if self.backbone_feature == "norm":
            return self.backbone.forward_features(images, valid_grids=valid_grids).patch_map()
        index = int(self.backbone_feature.split(".")[1])
        return self.backbone.forward_intermediates(images, [index], valid_grids=valid_grids)[0]

    def encode(self, images: torch.Tensor, pad_mask: torch.Tensor | None = None,
               image_sizes: Sequence[tuple[int, int]] | None = None) -> Encoded:
        """Backbone, neck and encoder.

        Args:
            images: (B, 3, H, W), H and W multiples of the patch size.
            pad_mask: (B, H, W) bool, True on padding pixels; None when nothing is padded.
            image_sizes: the B unpadded (h, w) in pixels as Python ints, the sizes `pad_mask` was
                made from (`collate_detection`'s "image_hw"): the token grids come from them instead
                of reading the mask back from the device and checking it (3 host-device syncs).

        Returns:
            `Encoded`: memory (B, S, d), its positional encoding (B, S, d), padding mask (B, S)
            (True on padding) and, with `two_stage`, the cells' reference boxes (B, S, 4);
            S = cells of all neck levels.
        """
        patch = self.backbone.patch_size
        if pad_mask is None:
            batch, _, height, width = images.shape
            grid = (-(-height // patch), -(-width // patch))  # ceil in integer ops, which a saved .pt2 can hold
            token_pad = torch.zeros(batch, *grid, dtype=torch.bool, device=images.device)
            valid_grids = None
            host_grids: list[tuple[int, int]] = [grid]  # every image has the whole grid
        else:
            if pad_mask.shape != (images.shape[0], *images.shape[-2:]):
                raise ValueError(
                    f"pad_mask has shape {tuple(pad_mask.shape)} but images {tuple(images.shape)} need "
                    f"{(images.shape[0], *images.shape[-2:])}"
                )
            if image_sizes is None:
                token_pad, valid_grids = token_padding(pad_mask, patch)
            else:
                token_pad, valid_grids = host_token_padding(pad_mask, patch, image_sizes)
            host_grids = valid_grids  # Python ints either way (token_padding read them)
            if all(grid == token_pad.shape[1:] for grid in valid_grids):
                valid_grids = None  # nothing padded at token level: the batched fast path
        feature = self._backbone_map(images, valid_grids)

        sources, positions, masks, cells = [], [], [], []
        for level, (level_map, level_mask) in enumerate(self.neck(feature, token_pad)):
            pos = self.position_encoding(level_mask).to(level_map.dtype).flatten(2).transpose(1, 2)
            if self.level_embed is not None:
                pos = pos + self.level_embed[level].to(pos.dtype)
            sources.append(level_map.flatten(2).transpose(1, 2))
            positions.append(pos)
            masks.append(level_mask.flatten(1))
            if self.two_stage:
                cells.append(cell_boxes(level_mask))
        src, pos, mask = torch.cat(sources, 1), torch.cat(positions, 1), torch.cat(masks, 1)
        # Only the two-stage selection needs it; an exported graph skips that check (symbolic sizes).
        min_valid_cells = None
        if self.two_stage and host_grids and not torch.compiler.is_exporting():
            min_valid_cells = min(self.neck.valid_cells(grid) for grid in host_grids)
        return Encoded(self.encoder(src, pos, mask), pos, mask, torch.cat(cells, 1) if cells else None,
                       min_valid_cells)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        targets: Sequence[dict] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict:
        """Detect.

        Args:
            images: (B, 3, H, W) float, padded bottom/right to a multiple of the patch size.
            pad_mask: (B, H, W) bool, True on padding pixels; None when nothing is padded.
            targets: training targets (B dicts with "labels" (T_b,) and "boxes" (T_b, 4)
                normalised cxcywh); only read to build denoising queries, in training mode.
            image_sizes: optional B unpadded (h, w) in pixels as Python ints (see `encode`); the
                training step passes them so that no device tensor is read before matching.

        Returns:
            "pred_logits" (B, Q, C + 1) ((B, Q, C) with sigmoid class scores), "pred_boxes" (B, Q, 4)
            sigmoid cxcywh normalised by each
            image's unpadded size, "aux_outputs" (with `aux_loss`: a list of L - 1 dicts with the
            same keys, first decoder layer first) and, when denoising queries were used,
            "dn_outputs" (same layout, (B, G * M, ...)) and "dn_meta" {"num_groups": G,
            "group_size": M} for `SetCriterion`. With `two_stage`, also "enc_outputs": the
            proposals of all S encoder cells, "pred_logits" (B, S, C + 1), "pred_boxes" (B, S, 4)
            and "pred_valid" (B, S) bool (False on padding cells, which the loss ignores).

        Attention runs without cuDNN's SDPA backend (`sdpa_without_cudnn`): batches change shape
        from step to step, and that backend rebuilds its execution graph for every new shape.
        """
        with sdpa_without_cudnn():
            return self._detect(images, pad_mask, targets, image_sizes)

    def _detect(self, images: torch.Tensor, pad_mask: torch.Tensor | None, targets: Sequence[dict] | None,
                image_sizes: Sequence[tuple[int, int]] | None = None) -> dict:
        """`forward`'s work (same arguments and outputs)."""
        memory, memory_pos, memory_mask, cells, min_valid_cells = self.encode(images, pad_mask, image_sizes)
        batch = images.shape[0]
        if self.query_type == "learned":
            query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
            hidden = self.decoder(torch.zeros_like(query_pos), memory, query_pos, memory_pos, memory_mask)
            logits, boxes = self.class_head(hidden), self.box_head(hidden).sigmoid()
            return self._pack(logits, boxes)

        enc_outputs = None
        if self.two_stage:
            assert cells is not None  # encode() builds them for two-stage models
            anchors, content, enc_outputs = self._select_proposals(memory, memory_mask, cells, min_valid_cells)
        else:
            anchors = self.anchor_embed.weight.sigmoid()[None].expand(batch, -1, -1)
            content = self.label_embed.weight[self.num_classes].expand(batch, self.num_queries, -1)
        attn_mask, num_dn, group_size = None, 0, 0
        if self.training and self.dn_groups and targets is not None:
            dn_labels, dn_boxes, dn_valid, group_size = build_denoising_queries(
                targets, self.dn_groups, self.num_classes, self.dn_label_noise, self.dn_box_noise, images.device
            )
            if group_size:
                num_dn = dn_labels.shape[1]
                content = torch.cat([self.label_embed(dn_labels), content], dim=1)
                anchors = torch.cat([dn_boxes, anchors], dim=1)
                attn_mask = denoising_attention_mask(dn_valid, self.dn_groups, self.num_queries)
        hidden, boxes = self.decoder(
            content, memory, anchors, self.box_head, memory_pos, memory_mask, self_attn_mask=attn_mask
        )
        logits = self.class_head(hidden)
        outputs = self._pack(logits[:, :, num_dn:], boxes[:, :, num_dn:])
        if num_dn:
            outputs["dn_outputs"] = self._pack(logits[:, :, :num_dn], boxes[:, :, :num_dn])
            outputs["dn_meta"] = {"num_groups": self.dn_groups, "group_size": group_size}
        if enc_outputs is not None:
            outputs["enc_outputs"] = enc_outputs
        return outputs

    def _select_proposals(
        self, memory: torch.Tensor, memory_mask: torch.Tensor, cells: torch.Tensor,
        min_valid_cells: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Two-stage query selection: the Q best encoder cells become the decoder's queries.

        Args:
            memory: (B, S, d) encoder outputs; memory_mask: (B, S) True on padding cells;
            cells: (B, S, 4) the cells' reference boxes (cxcywh).
            min_valid_cells: the fewest valid cells of any image if known on the host
                (`Encoded.min_valid_cells`); None reads it from `memory_mask` (a host-device sync).

        Returns:
            anchors (B, Q, 4) cxcywh and content (B, Q, d), both detached (the decoder's loss
            trains the decoder; the proposals learn from their own loss, as in DINO), and the
            "enc_outputs" dict of all S proposals for the loss.
        """
        # An exported graph (torch.export, ONNX) cannot branch on tensor values; the check is for
        # padded training batches, and an exported detector takes unpadded ones (topk fails alone).
        if torch.compiler.is_exporting():
            num_cells = self.num_queries
        elif min_valid_cells is not None:
            num_cells = min_valid_cells
        else:
            num_cells = int((~memory_mask).sum(1).min())
        if num_cells < self.num_queries:
            raise ValueError(
                f"two_stage selects num_queries={self.num_queries} encoder cells but an image has only "
                f"{num_cells} valid cells: use larger images or fewer queries"
            )
        features = self.enc_output(memory)
        logits = self.enc_class_head(features)  # (B, S, C + 1), or (B, S, C) with sigmoid scores
        # fp32 box arithmetic: the corrections are added in logit space, where bf16 is too coarse.
        boxes = (inverse_sigmoid(cells) + self.enc_box_head(features).float()).sigmoid()
        with torch.no_grad():
            # Object score: the best real class's probability; padding cells never win.
            score = class_probabilities(logits, self.class_score).amax(-1).masked_fill(memory_mask, -1.0)
            top = score.topk(self.num_queries, dim=1).indices  # (B, Q)
        anchors = boxes.detach().gather(1, top[..., None].expand(-1, -1, 4))
        content = features.detach().gather(1, top[..., None].expand(-1, -1, features.shape[-1]))
        return anchors, content, {"pred_logits": logits, "pred_boxes": boxes, "pred_valid": ~memory_mask}

    def _pack(self, logits: torch.Tensor, boxes: torch.Tensor) -> dict:
        """(L, B, Q, C + 1) logits and (L, B, Q, 4) boxes -> the output dict (last layer + aux)."""
        outputs: dict = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": layer_logits, "pred_boxes": layer_boxes}
                for layer_logits, layer_boxes in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return outputs
