"""Attention layers of the UNet over (B, C, H, W) feature maps.

`SpatialTransformer` is LDM's (Rombach et al. 2022, sec. 3.3): GroupNorm, a per-pixel projection,
transformer blocks (self-attention, cross-attention to a token context, GEGLU feed-forward),
a projection back and a residual. `AttentionBlock` is ADM's (Dhariwal & Nichol 2021) plain
self-attention block, optionally extended GLIDE-style (Nichol et al. 2021) with the context's
projected keys/values concatenated to its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from t2i.nn.attention import Attention
from t2i.nn.embeddings import FourierPosition2D


class GEGLUFeedForward(nn.Module):
    """Linear to 2x inner, value * GELU(gate), Linear back (Shazeer 2020, GLU variants)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, mult*dim) each
        return self.out(self.dropout(value * F.gelu(gate)))


class SpatialTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention (when a context_dim is given) and feed-forward, each residual."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, context_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim)
        self.norm2 = nn.LayerNorm(dim) if context_dim is not None else None
        self.attn2 = Attention(dim, heads=heads, head_dim=head_dim, context_dim=context_dim) if context_dim else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, N, C); context (B, L, D); context_mask (B, L) bool, True = real token."""
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context=context, mask=context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """LDM's transformer over the pixels of a feature map, with a residual around it (Rombach et al. 2022);
    `position=True` adds where each pixel lies to its tokens (zero at first), so that cross-attention can tie
    words such as "top left" to places: LDM's layer has no absolute position but the convolutions' padding."""

    def __init__(
        self, channels: int, *, heads: int, head_dim: int, context_dim: int | None, depth: int = 1, groups: int = 32,
        position: bool = False,
    ):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)  # a 1x1 conv applied per pixel
        self.position = FourierPosition2D(inner) if position else None
        self.blocks = nn.ModuleList(
            SpatialTransformerBlock(inner, heads=heads, head_dim=head_dim, context_dim=context_dim)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)  # a fresh block starts as the identity (LDM zero_module)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        b, c, hgt, wid = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)  # (B, HW, C)
        h = self.proj_in(h)  # (B, HW, inner)
        if self.position is not None:
            h = h + self.position(hgt, wid)  # (HW, inner) broadcast over the batch
        for block in self.blocks:
            h = block(h, context, context_mask)
        h = self.proj_out(h)  # (B, HW, C)
        return x + h.view(b, hgt, wid, c).permute(0, 3, 1, 2)  # (B, C, H, W)


class AttentionBlock(nn.Module):
    """ADM self-attention over pixels; with context_dim, GLIDE's encoder_kv joins the keys/values (Nichol et al. 2021)."""

    def __init__(self, channels: int, *, heads: int, head_dim: int, context_dim: int | None, groups: int = 32,
                 context_groups: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-5)
        # DeepFloyd IF: the context group-normed (over its tokens) before the key/value projections
        self.context_norm = nn.GroupNorm(context_groups, context_dim, eps=1e-5) if context_groups else None
        self.attn = Attention(
            channels,
            heads=heads,
            head_dim=head_dim,
            context_dim=context_dim,
            qkv_bias=True,
            concat_context=context_dim is not None,
        )
        nn.init.zeros_(self.attn.to_out.weight)  # ADM zero_module(proj_out)
        nn.init.zeros_(self.attn.to_out.bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W); context (B, L, D) projected into every head's keys/values."""
        b, c, hgt, wid = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)  # (B, HW, C)
        if self.context_norm is not None and context is not None:
            context = self.context_norm(context.transpose(1, 2)).transpose(1, 2)  # (B, L, D)
        h = self.attn(h, context=context, mask=context_mask if context is not None else None)  # (B, HW, C)
        return x + h.view(b, hgt, wid, c).permute(0, 3, 1, 2)  # (B, C, H, W)
