"""DETR's encoder-decoder transformer, and the anchor-box decoder of DAB-DETR.

Shapes are batch-first throughout: memory (B, S, d) with S the flattened cells of all neck
levels, queries (B, Q, d). Positional encodings are added to queries and keys in every layer
(never to values), as in DETR: the content stream stays free of position.

* `TransformerEncoder`: self-attention over the memory, padding cells masked as keys.
* `TransformerDecoder`: DETR's decoder. Learned positional queries ("object queries"), zero
  content; returns every layer's output through one shared LayerNorm (for the auxiliary losses).
* `AnchorDecoder`: DAB-DETR's (Liu et al. 2022) decoder. Each query is a 4-D anchor box
  (cx, cy, w, h); its positional query is an MLP of the anchor's sine embedding, its
  cross-attention compares the anchor's position with the memory's in a term of its own
  (`ConditionalCrossAttention`, Meng et al. 2021), and after each layer the box head predicts
  a correction in inverse-sigmoid space, giving the next layer a refined anchor. Attention
  then starts where the boxes are instead of having to learn it, which is what makes DETR
  converge in tens rather than hundreds of epochs.

Post-norm (DETR's default) or pre-norm layers; attention is `MultiheadAttention` below, pure
PyTorch with the backbone's kernel choice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vit_backbone.attention import AttentionKernel, resolve_attention_kernel

from .box_ops import inverse_sigmoid
from .position_encoding import box_sine_embedding

__all__ = [
    "MLP",
    "AnchorDecoder",
    "AnchorDecoderLayer",
    "ConditionalCrossAttention",
    "MultiheadAttention",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box head, DAB-DETR's positional-query head).

    Args:
        in_dim: input channels.
        hidden_dim: width of the hidden layers.
        out_dim: output channels.
        num_layers: number of Linear layers (>= 1).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiheadAttention(nn.Module):
    """Multi-head attention with separate query, key and value inputs (batch-first).

    Separate inputs because DETR adds positions to queries and keys but not to values.
    The kernel is chosen per call as in the backbone (`resolve_attention_kernel`): SDPA, or a
    plain matmul-softmax that trains faster in bf16 on CPUs with native bf16.

    Args:
        dim: channels d; divisible by `num_heads`.
        num_heads: heads.
        dropout: dropout on the attention weights.
        kernel: ``"auto" | "sdpa" | "manual"``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, kernel: AttentionKernel = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim={dim} is not divisible by nheads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.kernel = kernel
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, N, hd)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from queries to keys.

        Args:
            query: (B, L, d); key, value: (B, S, d).
            key_padding_mask: (B, S) bool, True on keys to ignore (padding).
            attn_mask: (L, S) or (B, L, S) bool, True where a query must not attend to a key.
                Every query must keep at least one key.

        Returns:
            (B, L, d).
        """
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        out = attend(q, k, v, allowed_keys(key_padding_mask, attn_mask), self.dropout if self.training else 0.0,
                     resolve_attention_kernel(self.kernel, key))
        return self.out_proj(out.transpose(1, 2).flatten(2))


def allowed_keys(key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Combine a (B, S) padding mask and an (L, S) / (B, L, S) block mask (both True = hidden)
    into one boolean "may attend" mask broadcastable to (B, H, L, S), or None."""
    allowed = None
    if key_padding_mask is not None:
        allowed = ~key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        pair_allowed = ~(attn_mask[None, None] if attn_mask.ndim == 2 else attn_mask[:, None])
        allowed = pair_allowed if allowed is None else allowed & pair_allowed
    return allowed


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, dropout: float,
           kernel: str) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v per head: q (B, H, L, e), k (B, H, S, e), v (B, H, S, e') -> (B, H, L, e').

    `kernel` is ``"sdpa"`` or ``"manual"`` (already resolved); `allowed` as from `allowed_keys`.
    """
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return F.dropout(logits.softmax(-1), dropout, dropout > 0) @ v


class ConditionalCrossAttention(nn.Module):
    """Cross-attention with separate content and spatial parts (Conditional DETR, DAB-DETR).

    Per head, the query is [content ; spatial] and the key [content ; position], so the logit
    is content.content + spatial.position: where to look (the anchor's sine embedding against
    the memory's) is one clean term instead of being mixed into the content by addition. In
    the first layer the content parts also carry the positions added (the queries have no
    content yet).

    Args:
        dim: channels d; divisible by `num_heads`.
        num_heads: heads.
        dropout: dropout on the attention weights.
        kernel: ``"auto" | "sdpa" | "manual"``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, kernel: AttentionKernel = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim={dim} is not divisible by nheads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.kernel = kernel
        self.q_content = nn.Linear(dim, dim)
        # Only the first layer reads it; `AnchorDecoder` removes it from the others (a parameter
        # without a gradient stops DDP).
        self.q_pos: nn.Linear | None = nn.Linear(dim, dim)
        self.q_spatial = nn.Linear(dim, dim)
        self.k_content = nn.Linear(dim, dim)
        self.k_pos = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for module in self.children():
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, N, hd)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        query_spatial: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        first_layer: bool,
    ) -> torch.Tensor:
        """Attend from queries to the memory.

        Args:
            query: query content (B, Q, d).
            query_pos: positional queries (B, Q, d) (added to the content in the first layer).
            query_spatial: the spatial query (B, Q, d): the anchor centre's sine embedding,
                scaled per channel (see `AnchorDecoder`).
            memory: (B, S, d); memory_pos: its sine positions (B, S, d).
            key_padding_mask: (B, S) bool, True on padding.
            first_layer: add the positions to the content parts.

        Returns:
            (B, Q, d).
        """
        q_content, k_pos = self.q_content(query), self.k_pos(memory_pos)
        k_content = self.k_content(memory)
        if first_layer:
            if self.q_pos is None:
                raise ValueError("this cross-attention was built for a later layer (no q_pos): first_layer must be False")
            q_content = q_content + self.q_pos(query_pos)
            k_content = k_content + k_pos
        q = torch.cat([self._heads(q_content), self._heads(self.q_spatial(query_spatial))], dim=-1)
        k = torch.cat([self._heads(k_content), self._heads(k_pos)], dim=-1)
        v = self._heads(self.v_proj(memory))
        out = attend(q, k, v, allowed_keys(key_padding_mask, None), self.dropout if self.training else 0.0,
                     resolve_attention_kernel(self.kernel, memory))
        return self.out_proj(out.transpose(1, 2).flatten(2))


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class _FeedForward(nn.Module):
    def __init__(self, dim: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward, post-norm (DETR) or pre-norm.

    Args:
        dim: channels d.
        num_heads: attention heads.
        dim_feedforward: hidden width of the feed-forward block.
        dropout: dropout on attention weights and residual branches.
        pre_norm: LayerNorm before each sub-block instead of after the residual sum.
        kernel: attention kernel.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1,
                 pre_norm: bool = False, kernel: AttentionKernel = "auto") -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, dropout, kernel)
        self.ffn = _FeedForward(dim, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None, padding_mask: torch.Tensor | None
                ) -> torch.Tensor:
        """src (B, S, d), pos (B, S, d), padding_mask (B, S) True on padding -> (B, S, d)."""
        if self.pre_norm:
            normed = self.norm1(src)
            qk = _with_pos(normed, pos)
            src = src + self.dropout1(self.self_attn(qk, qk, normed, key_padding_mask=padding_mask))
            return src + self.dropout2(self.ffn(self.norm2(src)))
        qk = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, key_padding_mask=padding_mask)))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers (+ a final LayerNorm for pre-norm, whose layers end un-normed).

    Args:
        layer: the layer to repeat (deep-copied).
        num_layers: how many.
        final_norm: channels of the final LayerNorm, or None for none.
    """

    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, final_norm: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(final_norm) if final_norm is not None else nn.Identity()

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None, padding_mask: torch.Tensor | None
                ) -> torch.Tensor:
        """src (B, S, d) + pos (B, S, d), padding_mask (B, S) True on padding -> memory (B, S, d)."""
        for layer in self.layers:
            src = layer(src, pos, padding_mask)
        return self.norm(src)


class TransformerDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the memory, feed-forward (post- or pre-norm).

    Args: as `TransformerEncoderLayer`.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1,
                 pre_norm: bool = False, kernel: AttentionKernel = "auto") -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, dropout, kernel)
        self.cross_attn = MultiheadAttention(dim, num_heads, dropout, kernel)
        self.ffn = _FeedForward(dim, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor | None,
        memory_pos: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        self_attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decoder layer.

        Args:
            tgt: query content (B, Q, d).
            memory: encoder output (B, S, d).
            query_pos: positional queries (B, Q, d).
            memory_pos: memory positions (B, S, d).
            memory_mask: (B, S) bool, True on padding cells.
            self_attn_mask: (Q, Q) or (B, Q, Q) bool, True where a query must not see another
                (denoising groups).

        Returns:
            (B, Q, d).
        """
        if self.pre_norm:
            normed = self.norm1(tgt)
            qk = _with_pos(normed, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(qk, qk, normed, attn_mask=self_attn_mask))
            normed = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.cross_attn(
                _with_pos(normed, query_pos), _with_pos(memory, memory_pos), memory, key_padding_mask=memory_mask
            ))
            return tgt + self.dropout3(self.ffn(self.norm3(tgt)))
        qk = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(qk, qk, tgt, attn_mask=self_attn_mask)))
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(
            _with_pos(tgt, query_pos), _with_pos(memory, memory_pos), memory, key_padding_mask=memory_mask
        )))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class AnchorDecoderLayer(TransformerDecoderLayer):
    """A decoder layer whose cross-attention is `ConditionalCrossAttention` (DAB-DETR).

    Args: as `TransformerEncoderLayer`.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1,
                 pre_norm: bool = False, kernel: AttentionKernel = "auto") -> None:
        super().__init__(dim, num_heads, dim_feedforward, dropout, pre_norm, kernel)
        self.cross_attn = ConditionalCrossAttention(dim, num_heads, dropout, kernel)  # type: ignore[assignment]

    def forward(  # type: ignore[override]
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor,
        query_spatial: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor | None,
        self_attn_mask: torch.Tensor | None,
        first_layer: bool,
    ) -> torch.Tensor:
        """As `TransformerDecoderLayer.forward`, with the spatial query of the cross-attention
        (B, Q, d) and whether this is the first layer."""
        if self.pre_norm:
            normed = self.norm1(tgt)
            qk = normed + query_pos
            tgt = tgt + self.dropout1(self.self_attn(qk, qk, normed, attn_mask=self_attn_mask))
            normed = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.cross_attn(
                normed, query_pos, query_spatial, memory, memory_pos, memory_mask, first_layer
            ))
            return tgt + self.dropout3(self.ffn(self.norm3(tgt)))
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(qk, qk, tgt, attn_mask=self_attn_mask)))
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(
            tgt, query_pos, query_spatial, memory, memory_pos, memory_mask, first_layer
        )))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class TransformerDecoder(nn.Module):
    """DETR's decoder: every layer's output through one shared LayerNorm.

    Args:
        layer: the layer to repeat (deep-copied).
        num_layers: how many.
        dim: channels of the shared final LayerNorm.
    """

    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor,
        memory_pos: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decode.

        Args:
            tgt: initial query content (B, Q, d) (zeros in DETR).
            memory, memory_pos, memory_mask: as in `TransformerDecoderLayer`.
            query_pos: learned object queries (B, Q, d).

        Returns:
            (L, B, Q, d): the normed output of every layer, the last one last.
        """
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, memory_pos, memory_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class AnchorDecoder(TransformerDecoder):
    """DAB-DETR's decoder: queries are anchor boxes, refined by the box head after every layer.

    Layer l reads the anchors a_l (B, Q, 4) (cx, cy, w, h) in [0, 1]:

    * positional query p = MLP(sine(a_l)) (all four coordinates), added to the content for the
      query self-attention;
    * spatial query of the cross-attention: the sine embedding of the centre (cy, cx), scaled
      per channel by MLP(content) (layers > 0; Conditional DETR) and, per axis, by
      w_ref / w and h_ref / h with (w_ref, h_ref) = sigmoid(MLP(content)): a wide anchor gets a
      flatter positional attention along x, a narrow one a sharper (DAB-DETR's modulation);
    * output o_l gives boxes b_l = sigmoid(box_head(norm(o_l)) + logit(a_l)), and
      a_{l+1} = b_l detached (each layer learns its own correction; no gradient runs through
      the chain of anchors, as in DAB-DETR and Deformable DETR's box refinement).

    Args:
        layer: the layer to repeat (deep-copied).
        num_layers: how many.
        dim: channels d (divisible by 4: the anchor's sine embedding has d / 2 channels per coordinate).
        temperature: of the sine embedding (the memory's `PositionEmbeddingSine` uses the same).
    """

    def __init__(self, layer: AnchorDecoderLayer, num_layers: int, dim: int, temperature: float = 10000.0) -> None:
        super().__init__(layer, num_layers, dim)  # type: ignore[arg-type]
        if dim % 4:
            raise ValueError(f"anchor queries need hidden_dim divisible by 4, got {dim}")
        self.temperature = temperature
        for later in self.layers[1:]:
            later.cross_attn.q_pos = None  # positions enter the content in the first layer only
        # (cy, cx, w, h) at d / 2 channels each = 2d -> d.
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.query_scale = MLP(dim, dim, dim, 2)
        self.ref_anchor_head = MLP(dim, dim, 2, 2)

    def forward(  # type: ignore[override]
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        anchors: torch.Tensor,
        box_head: Callable[[torch.Tensor], torch.Tensor],
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor | None,
        self_attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode with anchor refinement.

        Args:
            tgt: initial query content (B, Q, d).
            memory, memory_pos, memory_mask: as in `TransformerDecoderLayer`.
            anchors: initial anchors (B, Q, 4) normalised cxcywh in [0, 1].
            box_head: (..., d) -> (..., 4) box correction in inverse-sigmoid space (shared by
                all layers; owned by the caller).
            self_attn_mask: (Q, Q) or (B, Q, Q) bool, True where a query must not see another.

        Returns:
            (L, B, Q, d) normed outputs of every layer and (L, B, Q, 4) their boxes (cxcywh, fp32).
        """
        dim = tgt.shape[-1]
        outputs, boxes = [], []
        for index, layer in enumerate(self.layers):
            sine = box_sine_embedding(anchors, dim // 2, self.temperature).to(tgt.dtype)
            query_pos = self.ref_point_head(sine)
            spatial = sine[..., :dim]  # (cy, cx)
            if index > 0:
                spatial = spatial * self.query_scale(tgt)
            # Sizes clamped: a denoising box squeezed to the border must not scale by 1 / 0.
            ref_size = self.ref_anchor_head(tgt).sigmoid()
            size = anchors[..., 2:].clamp(min=0.01).to(ref_size.dtype)
            spatial = torch.cat([spatial[..., : dim // 2] * (ref_size[..., 1:] / size[..., 1:]),
                                 spatial[..., dim // 2 :] * (ref_size[..., :1] / size[..., :1])], dim=-1)
            tgt = layer(tgt, memory, query_pos, spatial, memory_pos, memory_mask, self_attn_mask, index == 0)
            normed = self.norm(tgt)
            refined = (box_head(normed).float() + inverse_sigmoid(anchors.float())).sigmoid()
            outputs.append(normed)
            boxes.append(refined)
            anchors = refined.detach()
        return torch.stack(outputs), torch.stack(boxes)
