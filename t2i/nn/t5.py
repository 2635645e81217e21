"""T5's encoder (Raffel et al. 2020), the frozen text encoder of Imagen (Saharia et al. 2022).

Pre-norm blocks with an RMS-style LayerNorm (no mean, no bias), attention without the 1/sqrt(d)
scale, a learned relative-position bias shared by all layers (bidirectional buckets: exact up to
num_buckets / 4, then logarithmic up to max_distance), and a ReLU MLP (T5 1.0) or gated GELU
(T5 1.1). Inference only: dropout is left out, the encoders built on it are frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config

FEED_FORWARD = ("relu", "gated-gelu")


@dataclass(frozen=True)
class T5Config(Config):
    """Sizes of a T5 encoder (t5-small by default)."""

    vocab_size: int = 32128
    width: int = 512  # d_model
    head_dim: int = 64  # d_kv (heads * head_dim need not equal width)
    mlp_dim: int = 2048  # d_ff
    layers: int = 6
    heads: int = 8
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    feed_forward: str = "relu"  # relu (T5 1.0) | gated-gelu (T5 1.1, flan-t5: tanh-approximated GELU gate)

    def __post_init__(self) -> None:
        if self.feed_forward not in FEED_FORWARD:
            raise ValueError(f"T5 feed_forward must be one of {FEED_FORWARD}, got {self.feed_forward!r}")

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> "T5Config":
        """From a transformers T5Config dict (config.json); refuses what this network does not compute."""
        ff = d.get("feed_forward_proj", "relu")
        if ff not in FEED_FORWARD:
            raise ValueError(f"unsupported T5 feed_forward_proj {ff!r}; t2i knows {', '.join(FEED_FORWARD)}")
        return cls(vocab_size=d.get("vocab_size", 32128), width=d.get("d_model", 512), head_dim=d.get("d_kv", 64),
                   mlp_dim=d.get("d_ff", 2048), layers=d.get("num_layers", 6), heads=d.get("num_heads", 8),
                   num_buckets=d.get("relative_attention_num_buckets", 32),
                   max_distance=d.get("relative_attention_max_distance", 128),
                   eps=d.get("layer_norm_epsilon", 1e-6), feed_forward=ff)


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional bucket of each key - query offset (Raffel et al. 2020, sec. 2.1): half the buckets per
    direction; offsets below a quarter of num_buckets get their own, larger ones share log-spaced buckets."""
    half = num_buckets // 2
    bucket = (relative > 0).long() * half
    n = relative.abs()
    exact = half // 2
    log = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
    return bucket + torch.where(n < exact, n, log.clamp(max=half - 1))


class T5Norm(nn.Module):
    """x / rms(x) * weight, in float32 (T5's LayerNorm: no mean subtraction, no bias)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(width)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


class T5Attention(nn.Module):
    """Multi-head self-attention with an additive bias and no score scaling (T5)."""

    def __init__(self, c: T5Config):
        super().__init__()
        inner, self.heads, self.head_dim = c.heads * c.head_dim, c.heads, c.head_dim
        self.q, self.k, self.v = (nn.Linear(c.width, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, c.width, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), bias (B|1, heads, L, L) (positions + mask) -> (B, L, D)."""
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)  # (B, heads, L, d)
        return self.o(h.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class T5MLP(nn.Module):
    """wo(relu(wi x)) (T5 1.0) or wo(gelu_tanh(wi_0 x) * wi_1 x) (T5 1.1's gated GELU)."""

    def __init__(self, c: T5Config):
        super().__init__()
        self.gated = c.feed_forward == "gated-gelu"
        self.wi = nn.Linear(c.width, c.mlp_dim, bias=False)
        self.gate = nn.Linear(c.width, c.mlp_dim, bias=False) if self.gated else None
        self.wo = nn.Linear(c.mlp_dim, c.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.wo(F.gelu(self.gate(x), approximate="tanh") * self.wi(x))
        return self.wo(F.relu(self.wi(x)))


class T5Block(nn.Module):
    """Pre-norm: x = x + Attn(LN(x)), then x = x + MLP(LN(x))."""

    def __init__(self, c: T5Config):
        super().__init__()
        self.ln1, self.attn = T5Norm(c.width, c.eps), T5Attention(c)
        self.ln2, self.mlp = T5Norm(c.width, c.eps), T5MLP(c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


class T5Encoder(nn.Module):
    """Token ids (B, L) and mask (B, L) (True = real token) -> token states (B, L, D)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.relative_bias = nn.Embedding(c.num_buckets, c.heads)  # held by block 0 in transformers
        self.blocks = nn.ModuleList(T5Block(c) for _ in range(c.layers))
        self.final_norm = T5Norm(c.width, c.eps)

    def position_bias(self, n: int, device: torch.device) -> torch.Tensor:
        """(1, heads, L, L): the learned bias of each key - query offset's bucket."""
        pos = torch.arange(n, device=device)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], self.config.num_buckets,
                                          self.config.max_distance)  # (L, L)
        return self.relative_bias(bucket).permute(2, 0, 1)[None]  # (1, heads, L, L)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(ids)  # (B, L, D)
        bias = self.position_bias(ids.shape[1], ids.device)  # (1, heads, L, L)
        if mask is not None:  # padding keys get the dtype's lowest value, as transformers masks them
            bias = bias + (~mask.bool())[:, None, None, :].to(bias.dtype) * torch.finfo(bias.dtype).min
        for block in self.blocks:
            x = block(x, bias)
        return self.final_norm(x)
