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

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
