"""Residual block with timestep conditioning, and the 2x down/up-sampling layers of the UNet."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}  # the UNet's nonlinearity (DeepFloyd IF uses GELU)


@dataclass(frozen=True)
class ResStyle:
    """How a ResBlock computes beyond its widths: its nonlinearity, BigGAN / ADM resampling inside the block
    ("down": 2x2 average pool, "up": nearest 2x, applied to h and x after the first norm; Brock et al. 2019),
    a divisor of its output (DeepFloyd IF's 1.414), and the convolutions' kernel (1: the fully connected
    residual blocks of Versatile Diffusion's text flow, Xu et al. 2023)."""

    act: str = "silu"
    resample: str | None = None
    out_scale: float = 1.0
    kernel: int = 3


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, timestep added (LDM) or as AdaGN scale-shift (Dhariwal & Nichol 2021, ADM)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        groups: int = 32,
        eps: float = 1e-5,
        scale_shift: bool = False,
        dropout: float = 0.0,
        style: ResStyle = ResStyle(),
    ):
        super().__init__()
        self.scale_shift, self.style, self.act = scale_shift, style, ACTIVATIONS[style.act]
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        k = style.kernel
        self.conv1 = nn.Conv2d(in_channels, out_channels, k, padding=k // 2)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if scale_shift else out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, k, padding=k // 2)
        nn.init.zeros_(self.conv2.weight)  # a fresh block starts as its skip path (ADM zero_module)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W)."""
        h = self.act(self.norm1(x))
        if self.style.resample is not None:  # ADM resblock_updown: resample h and x alike
            h, x = _resample(h, self.style.resample), _resample(x, self.style.resample)  # (B, C, H', W')
        h = self.conv1(h)  # (B, C_out, H', W')
        e = self.emb_proj(self.act(emb))[:, :, None, None]  # (B, C_out or 2*C_out, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # ADM eq. "AdaGN": norm(h)*(1+s)+b
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(self.act(h)))
        out = self.skip(x) + h
        return out / self.style.out_scale if self.style.out_scale != 1 else out


def _resample(x: torch.Tensor, how: str) -> torch.Tensor:
    """2x down (average pool) or up (nearest), without parameters (ADM's resblock_updown)."""
    return F.avg_pool2d(x, 2) if how == "down" else F.interpolate(x, scale_factor=2.0, mode="nearest")


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (halves H and W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, ceil(H/2), ceil(W/2))


class Upsample(nn.Module):
    """Nearest-neighbour 2x (or to an explicit size, for odd skips) then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")  # (B, C, *size)
        return self.conv(x)
