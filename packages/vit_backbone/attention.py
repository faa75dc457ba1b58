"""Multi-head self-attention with a choice of kernel.

Two kernels compute the same function:

* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on GPUs; the faster choice in fp32 and at long sequences on CPUs);
* ``"manual"``: ``softmax(q k^T * scale) v`` written out. On CPUs with native bf16
  (AVX-512 BF16 / AMX), the bf16 backward of SDPA is slow, and this kernel trains
  short-sequence ViTs faster.

``"auto"`` picks per call from the device, the compute dtype, the sequence length and whether
the CPU computes bf16 natively. Without native bf16 (e.g. AVX2-only CPUs) bf16 matmuls are
emulated, many times slower than fp32 for both kernels, and SDPA is the faster of the two.

`sdpa_without_cudnn` is for models whose sequence lengths change from batch to batch (a
detector on images of many sizes): it keeps SDPA off cuDNN's attention, which rebuilds its
execution graph for every new shape.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionKernel = Literal["auto", "sdpa", "manual"]
ATTENTION_KERNELS: tuple[str, ...] = ("auto", "sdpa", "manual")

# At long sequences SDPA's bf16 CPU kernel overtakes the plain one; this bound stays below the crossover.
_MANUAL_MAX_TOKENS_CPU_BF16 = 512


@cache
def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls in hardware on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def sdpa_without_cudnn() -> AbstractContextManager:
    """A context in which `scaled_dot_product_attention` may use every backend but cuDNN's.

    On Hopper GPUs PyTorch prefers cuDNN's fused attention for bf16, and that backend builds an
    execution graph, on the host, for every new input shape; a DETR batch has a new (tokens,
    padding) shape almost every step, so those builds dominate the host time of a training
    step (a profile is in docs/experiments/gpu.md). Flash and memory-efficient attention need no per-shape build. The backward pass runs the
    backward of the kernel chosen in the forward, so wrapping the forward is enough.
    """
    return sdpa_kernel([backend for name, backend in SDPBackend.__members__.items()
                        if name not in ("CUDNN_ATTENTION", "ERROR")])


def _computes_in_bf16_on_cpu(x: torch.Tensor) -> bool:
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def resolve_attention_kernel(kernel: str, x: torch.Tensor) -> str:
    """Return ``"sdpa"`` or ``"manual"`` for input tokens ``x`` of shape (B, N, C).

    ``"auto"`` chooses the plain kernel for bf16 on a CPU with native bf16 and at most 512
    tokens, and SDPA everywhere else (GPUs, fp32, long sequences, emulated bf16).
    """
    if kernel == "auto":
        short = x.shape[1] <= _MANUAL_MAX_TOKENS_CPU_BF16
        if short and _computes_in_bf16_on_cpu(x) and cpu_has_native_bf16():
            return "manual"
        return "sdpa"
    if kernel not in ("sdpa", "manual"):
        raise ValueError(f"attention kernel {kernel!r} is not one of {ATTENTION_KERNELS}")
    return kernel


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's parameter names).

    Args:
        dim: token channels C; must be divisible by `num_heads`.
        num_heads: number of heads H; head_dim = C / H.
        qkv_bias: bias on the qkv projection.
        qk_norm: LayerNorm over head_dim on queries and keys (ViT-22B); stabilises large models.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        kernel: ``"auto" | "sdpa" | "manual"`` (see module docstring).
        norm_eps: epsilon of the qk LayerNorms.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kernel: AttentionKernel = "auto",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {kernel!r} is not one of {ATTENTION_KERNELS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.kernel = kernel
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over all tokens.

        Args:
            x: tokens (B, N, C).
            attn_mask: optional boolean mask broadcastable to (B, H, N, N); True where a query
                may attend to a key (e.g. (B, 1, 1, N) to hide padded patches).

        Returns:
            (B, N, C).
        """
        batch, tokens, channels = x.shape
        # (B, N, 3C) -> (3, B, H, N, head_dim)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        if resolve_attention_kernel(self.kernel, x) == "sdpa":
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            # Scale q (N x head_dim) rather than the N x N logits: fewer multiplications.
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            weights = self.attn_drop(logits.softmax(dim=-1))
            out = weights @ v
        # (B, H, N, head_dim) -> (B, N, C)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kernel={self.kernel!r}"
