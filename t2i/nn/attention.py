"""Multi-head attention on token sequences, the one primitive every network here uses.

Vaswani et al. 2017 ("Attention Is All You Need"), computed with PyTorch's
`F.scaled_dot_product_attention`. Parameters are fused where the inputs allow it:

- self-attention (`context_dim is None`): `to_qkv` = Linear(query_dim, 3*inner), rows [q; k; v];
- cross-attention (`context_dim` set): `to_q` = Linear(query_dim, inner) and
  `to_kv` = Linear(context_dim, 2*inner), rows [k; v];
- GLIDE-style (`context_dim` set and `concat_context=True`): `to_qkv` from the tokens plus
  `to_context_kv` = Linear(context_dim, 2*inner); the context keys/values are prepended to the
  tokens' own (GLIDE's `encoder_kv`, Nichol et al. 2021);
- output: `to_out` = Linear(inner, query_dim).

Checkpoint converters (in `t2i/io/`) map separate q/k/v weights by concatenating them along
dim 0 in that order; nothing about any checkpoint layout lives here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


CPU_FP32 = {"on": True}  # `attention` computes in float32 on the CPU (set_cpu_fp32_attention)


def set_cpu_fp32_attention(on: bool) -> None:
    """Turn float32 attention under CPU bf16 autocast on (the default) or off (PyTorch's bf16 kernel)."""
    CPU_FP32["on"] = bool(on)


def _cpu_low_precision(q: torch.Tensor) -> bool:
    low = q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_cpu_enabled()
    return CPU_FP32["on"] and q.device.type == "cpu" and low


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention; on the CPU in float32 even under bf16 autocast: PyTorch's CPU flash
    kernel costs ~20 ms per bf16 call (forward + backward) at any size, float32 a few ms at ShapesWorld's
    sizes (benchmarks/train_throughput.py), and float32 attention is the more exact."""
    if not _cpu_low_precision(q):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kwargs["attn_mask"] = mask.float()
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d), a view (no copy)."""
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


def key_padding_bias(
    mask: torch.Tensor | None, n_query: int, n_key: int, causal: bool, dtype: torch.dtype
) -> torch.Tensor | None:
    """Additive attention bias from a (B, M) keep-mask and/or a causal rule; None when neither.

    Masked keys get the dtype's most negative value instead of -inf, so a query row with every
    key masked averages uniformly rather than producing NaN (as diffusers/transformers do).
    """
    if mask is None and not causal:
        return None
    device = mask.device if mask is not None else None
    keep = None
    if mask is not None:
        keep = mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, M)
    if causal:
        # query i sees keys j <= i + (M - N) (aligned at the end, so prepended keys stay visible)
        tri = torch.ones(n_query, n_key, dtype=torch.bool, device=device).tril(n_key - n_query)  # (N, M)
        keep = tri if keep is None else keep & tri
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return bias.masked_fill_(~keep, torch.finfo(dtype).min)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017) over (B, N, C) tokens."""

    def __init__(
        self,
        query_dim: int,
        *,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = True,
        concat_context: bool = False,
    ):
        super().__init__()
        if heads < 1 or head_dim < 1:
            raise ValueError(f"Attention needs heads >= 1 and head_dim >= 1, got {heads} and {head_dim}")
        if concat_context and context_dim is None:
            raise ValueError("Attention(concat_context=True) needs a context_dim")
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.cross = context_dim is not None and not concat_context
        self.concat_context = concat_context
        if self.cross:
            self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=qkv_bias)
        else:
            self.to_qkv = nn.Linear(query_dim, 3 * inner, bias=qkv_bias)
        if concat_context:
            self.to_context_kv = nn.Linear(context_dim, 2 * inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, query_dim, bias=out_bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attend x (B, N, C) to itself or to context (B, M, D); mask (B, M) bool, True = keep.

        For self-attention the mask applies to x's own tokens; for cross-attention to the
        context tokens; for GLIDE-style concatenation to the context part only (the tokens'
        own keys are always kept). A missing context in a cross/concat layer is an error,
        except in concat mode where the layer falls back to plain self-attention.
        """
        h = self.heads
        n = x.shape[1]
        if self.cross:
            if context is None:
                raise ValueError("this Attention layer is cross-attention and needs a context (B, M, D)")
            q = _split_heads(self.to_q(x), h)  # (B, h, N, d)
            k, v = (_split_heads(t, h) for t in self.to_kv(context).chunk(2, dim=-1))  # (B, h, M, d)
        else:
            q, k, v = (_split_heads(t, h) for t in self.to_qkv(x).chunk(3, dim=-1))  # (B, h, N, d)
            if self.concat_context and context is not None:
                ck, cv = (_split_heads(t, h) for t in self.to_context_kv(context).chunk(2, dim=-1))  # (B, h, M, d)
                k = torch.cat([ck, k], dim=2)  # (B, h, M+N, d)
                v = torch.cat([cv, v], dim=2)
                if mask is not None:
                    own = torch.ones(mask.shape[0], n, dtype=torch.bool, device=mask.device)
                    mask = torch.cat([mask.to(torch.bool), own], dim=1)  # (B, M+N)
        m = k.shape[2]
        if mask is not None and mask.shape[-1] != m:
            raise ValueError(f"attention mask covers {mask.shape[-1]} keys but there are {m}")
        if mask is None and (not causal or n == m):
            out = attention(q, k, v, is_causal=causal)  # (B, h, N, d)
        else:
            bias = key_padding_bias(mask, n, m, causal, q.dtype)  # (B|1, 1, N|1, M)
            out = attention(q, k, v, attn_mask=bias)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(x.shape[0], n, h * self.head_dim)  # (B, N, h*d)
        return self.to_out(out)
