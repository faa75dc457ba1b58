"""The Vision Transformer (Dosovitskiy et al. 2021) with timm's parameter names.

    image (B, in_chans, H, W)
      -> patch embedding (strided conv, a conv stem, or a hybrid's CNN)   (B, h*w, C)
      -> [class token, register tokens] + position embedding              (B, P + h*w, C)
      -> depth x pre-norm Block                                           (B, P + h*w, C)
      -> final LayerNorm                                                  -> ViTFeatures
      -> pool (class token or mean of patch tokens) -> head               (B, num_classes)

State-dict names follow timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.N.attn.qkv`, ..., `norm`, `head`), so timm checkpoints load with
`strict=True` and both models can be compared number for number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import ATTENTION_KERNELS, AttentionKernel
from .block import Block
from .conv_stem import ConvStemEmbed
from .drop_path import drop_path_rates
from .features import FeatureSpec, ViTFeatures
from .hybrid import HybridEmbed
from .patch_embed import PatchEmbed
from .pos_embed import (
    POS_EMBED_KINDS,
    RESAMPLERS,
    PosEmbedResampler,
    resample_pos_embed,
    sincos_1d,
    sincos_2d,
)

GlobalPool = Literal["token", "avg", "none"]
PosEmbedKind = Literal["learn", "sincos1d", "sincos2d", "none"]
WeightInit = Literal["timm", "jax", "jax_nlhb", "skip"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _lecun_normal_(tensor: torch.Tensor) -> None:
    """Truncated normal with variance 1 / fan_in (JAX's lecun_normal)."""
    fan_in = tensor[0].numel()
    # 0.8796... is the std of a standard normal truncated to [-2, 2]; dividing keeps variance 1/fan_in.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def check_valid_grids(valid_grids: Sequence[tuple[int, int]], grid: tuple[int, int], batch: int) -> None:
    """Raise a one-line ValueError unless `valid_grids` holds one (h_i, w_i) per image inside `grid`."""
    if len(valid_grids) != batch:
        raise ValueError(f"valid_grids has {len(valid_grids)} entries for a batch of {batch} images")
    for index, valid in enumerate(valid_grids):
        if len(valid) != 2 or not (1 <= int(valid[0]) <= grid[0] and 1 <= int(valid[1]) <= grid[1]):
            raise ValueError(
                f"valid_grids[{index}]={tuple(valid)} is not a (h, w) grid between 1x1 and the batch grid "
                f"{grid[0]}x{grid[1]}"
            )


def valid_grid_token_mask(
    valid_grids: Sequence[tuple[int, int]], grid: tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """(B, h*w) bool token mask, True on the top-left h_i x w_i tokens of each image (its unpadded grid).

    Args:
        valid_grids: per-image (h_i, w_i) token grid of the unpadded image.
        grid: (h, w) token grid of the padded batch.
        device: where to build the mask.
    """
    check_valid_grids(valid_grids, grid, len(valid_grids))
    sizes = torch.tensor([[int(h), int(w)] for h, w in valid_grids], dtype=torch.long, device=device)
    rows = torch.arange(grid[0], device=device)
    cols = torch.arange(grid[1], device=device)
    inside = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
    return inside.flatten(1)


class VisionTransformer(nn.Module):
    """A ViT backbone with a classification head.

    Args:
        img_size: size (H, W) the learned position embedding is stored for; other sizes
            divisible by the patch size are resampled at run time.
        patch_size: patch side p (for a hybrid or a conv stem: the CNN's total stride, 16 for 3
            ResNet stages, 2**len(conv_stem) for a conv stem).
        in_chans: image channels.
        num_classes: classes of the linear head; 0 for no head (`forward` returns pooled features).
        global_pool: ``"token"`` (class token), ``"avg"`` (mean of patch tokens) or ``"none"``
            (the head is applied to every patch token).
        embed_dim: token channels C.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias on the qkv projection.
        qk_norm: LayerNorm on queries and keys.
        init_values: LayerScale initial gain; None disables LayerScale.
        class_token: prepend a learned class token.
        reg_tokens: number of register tokens (Darcet et al. 2024) after the class token.
        pos_embed: ``"learn"``, ``"sincos1d"`` (fixed 1D sinusoid over the token sequence),
            ``"sincos2d"`` (fixed 2D sin-cos over the patch grid) or ``"none"``.
        no_embed_class: the learned position embedding covers patches only (DeiT-3, big_vision);
            otherwise it has rows for the class and register tokens too (original ViT).
        pos_embed_resampler: how learned position embeddings follow a new grid (`pos_embed.RESAMPLERS`).
        dynamic_img_pad: zero-pad inputs not divisible by the patch size instead of failing.
        fc_norm: LayerNorm after pooling instead of before it (timm's layout for avg-pooled
            models: `norm` becomes Identity and `fc_norm` holds the weights).
        drop_rate: dropout before the head.
        pos_drop_rate: dropout after adding the position embedding.
        proj_drop_rate: dropout after attention projection and in the MLP.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last block; earlier blocks get linearly less.
        attn_kernel: ``"auto" | "sdpa" | "manual"`` (see `attention.py`).
        weight_init: ``"timm"`` (trunc-normal 0.02), ``"jax"`` (xavier, zero head),
            ``"jax_nlhb"`` (jax with head bias -log(num_classes)) or ``"skip"`` (no re-init, e.g.
            before loading a checkpoint).
        norm_eps: LayerNorm epsilon.
        hybrid_layers: ResNetV2 blocks per stage (e.g. (3, 4, 9)) for a hybrid CNN + ViT; None
            for plain patches.
        conv_stem: output channels of stride-2 3x3 convolutions (BatchNorm + ReLU) that replace the
            patchify convolution, followed by a 1x1 projection to `embed_dim` (Xiao et al. 2021,
            `conv_stem.py`), e.g. (24, 48, 96) for stride 8; None for plain patches.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: GlobalPool = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        class_token: bool = True,
        reg_tokens: int = 0,
        pos_embed: PosEmbedKind = "learn",
        no_embed_class: bool = False,
        pos_embed_resampler: PosEmbedResampler = "timm",
        dynamic_img_pad: bool = False,
        fc_norm: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_kernel: AttentionKernel = "auto",
        weight_init: WeightInit = "timm",
        norm_eps: float = 1e-6,
        hybrid_layers: tuple[int, ...] | None = None,
        conv_stem: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg", "none"):
            raise ValueError(f"global_pool={global_pool!r} is not one of ('token', 'avg', 'none')")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without one")
        if pos_embed not in POS_EMBED_KINDS:
            raise ValueError(f"pos_embed={pos_embed!r} is not one of {POS_EMBED_KINDS}")
        if pos_embed_resampler not in RESAMPLERS:
            raise ValueError(f"pos_embed_resampler={pos_embed_resampler!r} is not one of {tuple(RESAMPLERS)}")
        if attn_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attn_kernel={attn_kernel!r} is not one of {ATTENTION_KERNELS}")
        if weight_init not in ("timm", "jax", "jax_nlhb", "skip"):
            raise ValueError(f"weight_init={weight_init!r} is not one of ('timm', 'jax', 'jax_nlhb', 'skip')")

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.num_reg_tokens = reg_tokens
        self.has_class_token = class_token
        self.pos_embed_kind = pos_embed
        self.no_embed_class = no_embed_class
        self.pos_embed_resampler = pos_embed_resampler
        self.grad_checkpointing = False

        if hybrid_layers is not None and conv_stem is not None:
            raise ValueError("hybrid_layers and conv_stem both replace the patch embedding: give one of them")
        if conv_stem is not None:
            self.patch_embed: PatchEmbed | HybridEmbed | ConvStemEmbed = ConvStemEmbed(
                tuple(conv_stem), in_chans, embed_dim, dynamic_img_pad=dynamic_img_pad
            )
            if self.patch_embed.stride != patch_size:
                raise ValueError(
                    f"conv_stem={tuple(conv_stem)} gives a stride of {self.patch_embed.stride} "
                    f"(2**{len(tuple(conv_stem))}), but patch_size={patch_size}"
                )
        elif hybrid_layers is not None:
            self.patch_embed = HybridEmbed(
                tuple(hybrid_layers), in_chans, embed_dim, dynamic_img_pad=dynamic_img_pad
            )
            if self.patch_embed.stride != patch_size:
                raise ValueError(
                    f"hybrid_layers={tuple(hybrid_layers)} give a stride of {self.patch_embed.stride}, "
                    f"but patch_size={patch_size}"
                )
        else:
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, dynamic_img_pad=dynamic_img_pad)
        height, width = _pair(img_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"img_size {height}x{width} is not divisible by patch_size={patch_size}")
        self.grid_size = (height // patch_size, width // patch_size)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        num_grid_tokens = self.grid_size[0] * self.grid_size[1]
        if pos_embed == "learn":
            embed_len = num_grid_tokens if no_embed_class else num_grid_tokens + self.num_prefix_tokens
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        else:
            # Fixed embeddings are recomputed for the input grid; not a parameter, not saved.
            self.pos_embed = None
            self.register_buffer("fixed_pos_embed", self._fixed_pos_embed(self.grid_size), persistent=False)
        self.pos_drop = nn.Dropout(pos_drop_rate)

        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
                init_values=init_values, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                drop_path=rates[i], attn_kernel=attn_kernel, norm_eps=norm_eps,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if not fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        if weight_init != "skip":
            self.init_weights(weight_init)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, mode: WeightInit = "timm") -> None:
        """Re-initialise the ViT parameters as timm does (`"timm"`) or as the JAX originals (`"jax"`).

        The CNN of a hybrid and the 3x3 convolutions and norms of a conv stem keep their own
        (PyTorch) initialisation; a conv stem's final 1x1 projection is treated as `patch_embed.proj`.
        """
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        head_bias = -math.log(self.num_classes) if mode == "jax_nlhb" and self.num_classes > 0 else 0.0
        modules = [("patch_embed.proj", self.patch_embed.proj), ("head", self.head)]
        modules += [(f"blocks.{name}", module) for name, module in self.blocks.named_modules()]
        for name, module in modules:
            if isinstance(module, nn.Linear):
                if mode == "timm":
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif name == "head":
                    nn.init.zeros_(module.weight)
                    nn.init.constant_(module.bias, head_bias)
                else:
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        # JAX's MLP biases start at N(0, 1e-6), every other bias at zero.
                        if ".mlp." in name:
                            nn.init.normal_(module.bias, std=1e-6)
                        else:
                            nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                if mode == "timm":
                    module.reset_parameters()
                else:
                    _lecun_normal_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif hasattr(module, "reset_parameters") and name.endswith((".ls1", ".ls2")):
                module.reset_parameters()

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed (embeddings and tokens)."""
        return {"pos_embed", "cls_token", "reg_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: GlobalPool | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` (0 removes it)."""
        if global_pool is not None:
            if global_pool == "token" and not self.has_class_token:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------ specs
    def feature_specs(self) -> dict[str, FeatureSpec]:
        """Channels and stride of every named output.

        `"blocks.N"` are the outputs of `forward_intermediates`, `"norm"` the final patch
        tokens of `forward_features`, and for a hybrid `"stem"`, `"stages.0"`, ... the CNN skips.
        """
        specs: dict[str, FeatureSpec] = {}
        if isinstance(self.patch_embed, HybridEmbed):
            for name, (channels, stride) in self.patch_embed.skip_specs().items():
                specs[name] = FeatureSpec(channels, stride)
        for index in range(len(self.blocks)):
            specs[f"blocks.{index}"] = FeatureSpec(self.embed_dim, self.patch_size)
        specs["norm"] = FeatureSpec(self.embed_dim, self.patch_size)
        return specs

    # ------------------------------------------------------------------ embedding
    def _fixed_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if self.pos_embed_kind == "sincos2d":
            return sincos_2d(grid, self.embed_dim)[None]
        if self.pos_embed_kind == "sincos1d":
            return sincos_1d(self.num_prefix_tokens + grid[0] * grid[1], self.embed_dim)[None]
        return torch.zeros(1, 0, self.embed_dim)

    def _position_embedding(self, grid: tuple[int, int], reference: torch.Tensor) -> torch.Tensor | None:
        """The position embedding for a token grid, resampled or recomputed as needed."""
        if self.pos_embed_kind == "none":
            return None
        if self.pos_embed is not None:
            return resample_pos_embed(
                self.pos_embed, self.grid_size, grid,
                num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
                resampler=self.pos_embed_resampler,
            )
        if tuple(grid) == self.grid_size:
            return self.fixed_pos_embed
        return self._fixed_pos_embed(grid).to(reference.device)

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        tokens = []
        if self.cls_token is not None:
            tokens.append(self.cls_token.expand(batch, -1, -1))
        if self.reg_token is not None:
            tokens.append(self.reg_token.expand(batch, -1, -1))
        return tokens

    # Runs eagerly under torch.compile: the per-image grids are Python ints that change from batch to
    # batch; traced, they become symbolic sizes, and torch cannot trace the backward of the
    # antialiased bicubic resampling at symbolic sizes. Eager, it is a few small interpolations.
    @torch.compiler.disable
    def _per_image_position_embedding(
        self, grid: tuple[int, int], valid_grids: Sequence[tuple[int, int]], reference: torch.Tensor
    ) -> torch.Tensor | None:
        """One position embedding per image of a padded batch: (B, P' + h*w, C) or None.

        Image i gets exactly the embedding an unpadded forward of its own (h_i, w_i) grid would
        add (the learned table resampled to (h_i, w_i), or the fixed sinusoid of that grid), in
        the top-left h_i x w_i corner of the batch grid, and zeros on the padded tokens. P' is the
        number of prefix rows the embedding kind carries (as in `_position_embedding`).
        """
        if self.pos_embed_kind == "none":
            return None
        height, width = grid
        per_grid: dict[tuple[int, int], torch.Tensor] = {}
        rows: list[torch.Tensor] = []
        for valid in valid_grids:
            valid = (int(valid[0]), int(valid[1]))
            if valid not in per_grid:
                pos = self._position_embedding(valid, reference)[0]  # (P' + h_i*w_i, C)
                num_prefix = pos.shape[0] - valid[0] * valid[1]
                canvas = pos.new_zeros(height, width, pos.shape[-1])
                canvas[: valid[0], : valid[1]] = pos[num_prefix:].reshape(valid[0], valid[1], -1)
                per_grid[valid] = torch.cat([pos[:num_prefix], canvas.flatten(0, 1)], dim=0)
            rows.append(per_grid[valid])
        return torch.stack(rows)

    def embed(
        self, x: torch.Tensor, valid_grids: Sequence[tuple[int, int]] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int], dict[str, torch.Tensor]]:
        """Image batch (B, in_chans, H, W) -> tokens (B, P + h*w, C) with positions added, the grid (h, w), skips.

        Args:
            x: images (B, in_chans, H, W).
            valid_grids: optional per-image (h_i, w_i) token grid of the unpadded image in a batch
                padded bottom/right (see `forward_features`); each image then gets its own
                position embedding, zero on its padded tokens.
        """
        patches, grid, skips = self.patch_embed(x)
        if valid_grids is None:
            pos = self._position_embedding(grid, patches)
        else:
            check_valid_grids(valid_grids, grid, patches.shape[0])
            pos = self._per_image_position_embedding(grid, valid_grids, patches)
        prefix = self._prefix_tokens(patches.shape[0])
        if pos is None:
            tokens = torch.cat(prefix + [patches], dim=1)
        elif self.pos_embed_kind == "sincos2d" or (self.pos_embed is not None and self.no_embed_class):
            # The embedding covers the patch grid only: add, then prepend the prefix tokens.
            tokens = torch.cat(prefix + [patches + pos.to(patches.dtype)], dim=1)
        else:
            # Original ViT: the embedding has rows for the prefix tokens too.
            tokens = torch.cat(prefix + [patches], dim=1)
            tokens = tokens + pos.to(tokens.dtype)
        return self.pos_drop(tokens), grid, skips

    def _attention_mask(
        self,
        token_mask: torch.Tensor | None,
        valid_grids: Sequence[tuple[int, int]] | None = None,
        grid: tuple[int, int] | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor | None:
        """(B, h*w) bool, True for real patches -> (B, 1, 1, P + h*w) key mask; prefix tokens always valid.

        With `valid_grids`, the tokens outside each image's grid are hidden as well (and-ed with
        `token_mask` when both are given).
        """
        if valid_grids is not None:
            grid_mask = valid_grid_token_mask(valid_grids, grid, device=device)
            token_mask = grid_mask if token_mask is None else token_mask.bool() & grid_mask
        if token_mask is None:
            return None
        prefix = token_mask.new_ones(token_mask.shape[0], self.num_prefix_tokens)
        return torch.cat([prefix, token_mask.bool()], dim=1)[:, None, None, :]

    def _run_block(self, block: Block, tokens: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, tokens, attn_mask, use_reentrant=False)
        return block(tokens, attn_mask=attn_mask)

    # ------------------------------------------------------------------ forward
    def forward_features(
        self,
        x: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        valid_grids: Sequence[tuple[int, int]] | None = None,
    ) -> ViTFeatures:
        """Run the backbone.

        Args:
            x: images (B, in_chans, H, W); H and W divisible by the patch size (or padded
                when the model was built with `dynamic_img_pad`).
            token_mask: optional (B, h*w) bool, False for patches to hide from attention
                (padding in a batch of differently sized images).
            valid_grids: optional per-image (h_i, w_i) token grid of the unpadded image, for a
                batch whose images were padded bottom/right to a common size. Each image then
                gets its own position embedding (resampled to (h_i, w_i) exactly as an unpadded
                forward would, zero on padded tokens) and its padded tokens are hidden from
                attention, so its valid tokens equal those of the unpadded image up to float
                rounding. Padded tokens hold meaningless values. For a hybrid model the CNN
                stem still sees the padded canvas (its convolutions and GroupNorm mix padding
                into border tokens), so there the equality holds only approximately.

        Returns:
            `ViTFeatures` with the normed patch tokens (B, h*w, C), class token (B, C) or None,
            register tokens (B, R, C) or None, the grid (h, w) and, for a hybrid, the CNN skips.
        """
        tokens, grid, skips = self.embed(x, valid_grids)
        attn_mask = self._attention_mask(token_mask, valid_grids, grid, tokens.device)
        for block in self.blocks:
            tokens = self._run_block(block, tokens, attn_mask)
        tokens = self.norm(tokens)
        cls_token = tokens[:, 0] if self.has_class_token else None
        registers = tokens[:, int(self.has_class_token) : self.num_prefix_tokens] if self.num_reg_tokens else None
        return ViTFeatures(
            patch_tokens=tokens[:, self.num_prefix_tokens :],
            cls_token=cls_token,
            register_tokens=registers,
            grid_size=grid,
            skips=skips,
        )

    def pool(self, features: ViTFeatures) -> torch.Tensor:
        """(B, C) for "token" / "avg" pooling, (B, h*w, C) for "none"."""
        if self.global_pool == "token":
            return features.cls_token
        if self.global_pool == "avg":
            return features.patch_tokens.mean(dim=1)
        return features.patch_tokens

    def forward_head(self, features: ViTFeatures, pre_logits: bool = False) -> torch.Tensor:
        """Pool, fc_norm, dropout and the linear head: -> (B, num_classes) (or (B, C) with `pre_logits`)."""
        pooled = self.head_drop(self.fc_norm(self.pool(features)))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def _block_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        depth = len(self.blocks)
        if indices is None:
            return list(range(depth))
        if isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"asked for the last {indices} blocks of a model with {depth} blocks")
            return list(range(depth - indices, depth))
        chosen = []
        for index in indices:
            if not -depth <= index < depth:
                raise ValueError(f"block index {index} is out of range for a model with {depth} blocks")
            chosen.append(index % depth)
        return chosen

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: Literal["NCHW", "NLC"] = "NCHW",
        token_mask: torch.Tensor | None = None,
        valid_grids: Sequence[tuple[int, int]] | None = None,
    ) -> list[torch.Tensor]:
        """Outputs of chosen blocks as dense maps, for heads that need several depths.

        Only the blocks up to the deepest one asked for are run.

        Args:
            x: images (B, in_chans, H, W).
            indices: block indices (negative counts from the end), an int n for the last n
                blocks, or None for all blocks.
            norm: apply the final LayerNorm to each output.
            output_fmt: ``"NCHW"`` for (B, C, h, w) maps, ``"NLC"`` for (B, h*w, C) tokens.
            token_mask: as in `forward_features`.
            valid_grids: as in `forward_features`.

        Returns:
            one tensor per index, in the order of `indices`, prefix tokens removed.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not 'NCHW' or 'NLC'")
        chosen = self._block_indices(indices)
        tokens, grid, _ = self.embed(x, valid_grids)
        attn_mask = self._attention_mask(token_mask, valid_grids, grid, tokens.device)
        outputs: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks[: max(chosen) + 1]):
            tokens = self._run_block(block, tokens, attn_mask)
            if index in chosen:
                patch_tokens = tokens[:, self.num_prefix_tokens :]
                if norm:
                    patch_tokens = self.norm(patch_tokens)
                if output_fmt == "NCHW":
                    batch, _, channels = patch_tokens.shape
                    patch_tokens = patch_tokens.transpose(1, 2).reshape(batch, channels, *grid)
                outputs[index] = patch_tokens
        return [outputs[index] for index in chosen]
