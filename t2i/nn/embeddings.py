"""Timestep embeddings: the sinusoidal features and the MLP that lifts them to the UNet's width."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos | sin] of (possibly fractional) timesteps (Vaswani et al. 2017; ADM/LDM order)."""
    t = torch.as_tensor(t)
    if t.ndim > 1:
        raise ValueError(f"timesteps must be a scalar or a (B,) tensor, got shape {tuple(t.shape)}")
    t = t.reshape(-1).float()  # (B,)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class TimestepMLP(nn.Module):
    """Linear -> SiLU -> Linear, lifting sinusoidal (or pooled) features to the embedding width (ADM)."""

    def __init__(self, in_dim: int, out_dim: int, act: str = "silu"):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)
        self.act = {"silu": F.silu, "gelu": F.gelu}[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class AttentionPool(nn.Module):
    """One query, the tokens' mean plus a learned position, attends over [query, tokens] (CLIP's ResNet
    attention pool, Radford et al. 2021; DeepFloyd IF pools T5 states so); no output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"AttentionPool: {dim} channels do not split into {heads} heads")
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(1, dim) / dim**0.5)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, D)."""
        b, _, d = x.shape
        query = x.mean(dim=1, keepdim=True) + self.positional_embedding.to(x.dtype)  # (B, 1, D)
        x = torch.cat([query, x], dim=1)  # (B, 1+L, D)
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731 (B, h, N, d)
        out = F.scaled_dot_product_attention(split(self.q_proj(query)), split(self.k_proj(x)), split(self.v_proj(x)))
        return out.transpose(1, 2).reshape(b, d)  # (B, D)


class TextTimeEmbedding(nn.Module):
    """Token states -> a vector added to the time embedding: LayerNorm, attention pool, Linear, LayerNorm
    (DeepFloyd IF's pooled-text conditioning, after Imagen's pooled text embedding, Saharia et al. 2022)."""

    def __init__(self, dim: int, out_dim: int, heads: int):
        super().__init__()
        self.norm1, self.pool = nn.LayerNorm(dim), AttentionPool(dim, heads)
        self.proj, self.norm2 = nn.Linear(dim, out_dim), nn.LayerNorm(out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D) -> (B, out_dim)."""
        return self.norm2(self.proj(self.pool(self.norm1(tokens))))


class FourierPosition2D(nn.Module):
    """Where each pixel of an (H, W) map lies, as sin/cos of its coordinates in [-1, 1] at octave frequencies,
    through a zero-initialised Linear: a layer that gains it starts as the one without (Tancik et al. 2020's
    Fourier features; zero-init as ControlNet's zero convolutions). Resolution-free: any H, W."""

    def __init__(self, dim: int, frequencies: int = 4):
        super().__init__()
        self.register_buffer("freqs", math.pi / 2 * 2.0 ** torch.arange(frequencies), persistent=False)
        self.proj = nn.Linear(4 * frequencies, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """-> (H*W, dim), row-major like a flattened feature map."""
        axis = lambda n: (torch.arange(n, device=self.freqs.device) + 0.5) / n * 2 - 1  # noqa: E731 pixel centres
        y, x = torch.meshgrid(axis(height), axis(width), indexing="ij")  # (H, W) each
        args = torch.stack([y, x], dim=-1).reshape(-1, 2, 1) * self.freqs  # (HW, 2, F)
        features = torch.cat([args.sin(), args.cos()], dim=-1).reshape(height * width, -1)  # (HW, 4F)
        return self.proj(features.to(self.proj.weight.dtype))
