"""Noise-aware image classifier: the UNet's downsampling trunk and an attention pool (ADM, Dhariwal & Nichol 2021).

guided-diffusion's EncoderUNetModel with `pool="attention"`: timestep embedding, the UNet's input
conv, down path and middle block (built by `UNet` itself from its ResBlock / Downsample / attention
classes and kept, the up path dropped), GroupNorm-SiLU, then `AttentionPool2d`: the mean token,
with a learned position table over [mean; pixels], attends over the final feature map, and its
output is projected to logits. It takes what a discrete-time denoiser's network takes: the VP
sample x / sqrt(sigma^2 + 1) and the timestep t (`t2i.diffusion.TimestepNet`), so its gradient
can guide sampling (classifier guidance; GLIDE, Nichol et al. 2021, sec. 2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config
from t2i.nn.attention import Attention
from t2i.nn.embeddings import timestep_embedding
from t2i.nn.unet import UNet, UNetConfig


@dataclass(frozen=True)
class ClassifierConfig(Config):
    """Trunk widths per level (each level after the first halves the side), labels, and the pooled side."""

    image_size: int = 64
    in_channels: int = 3
    num_labels: int = 40
    block_channels: tuple[int, ...] = (64, 128, 256, 256)  # 64 px -> 8 x 8 at the last level, where ADM pools
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (2, 3)  # ADM's classifier attends at 16 and 8 px (of 64)
    head_dim: int = 32  # attention head width in the trunk and the pool
    scale_shift: bool = True  # ADM's AdaGN
    norm_groups: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_channels", tuple(int(c) for c in self.block_channels))
        object.__setattr__(self, "attention_levels", tuple(int(i) for i in self.attention_levels))
        if self.image_size % 2 ** (len(self.block_channels) - 1):
            raise ValueError(f"ClassifierConfig: image_size {self.image_size} does not halve "
                             f"{len(self.block_channels) - 1} times")
        if self.num_labels < 1:
            raise ValueError(f"ClassifierConfig: num_labels = {self.num_labels}: must be >= 1")
        if self.block_channels[-1] % self.head_dim:
            raise ValueError(f"ClassifierConfig: head_dim {self.head_dim} does not divide {self.block_channels[-1]}")
        self.unet  # raises on what UNetConfig refuses

    @property
    def pool_size(self) -> int:
        """Side of the feature map the attention pool sees."""
        return self.image_size // 2 ** (len(self.block_channels) - 1)

    @property
    def unet(self) -> UNetConfig:
        """The UNet whose down path and middle block are the trunk (no text context, ADM attention blocks)."""
        return UNetConfig(in_channels=self.in_channels, out_channels=1, block_channels=self.block_channels,
                          num_res_blocks=self.num_res_blocks, attention_levels=self.attention_levels,
                          num_heads=None, head_dim=self.head_dim, attention_block="adm", context_dim=None,
                          scale_shift=self.scale_shift, norm_groups=self.norm_groups, dropout=self.dropout)


class AttentionPool2d(nn.Module):
    """ADM's attention pooling: [mean; pixels] + positions, self-attention, the mean token's output -> (B, out)."""

    def __init__(self, side: int, channels: int, head_dim: int, out_dim: int):
        super().__init__()
        self.position = nn.Parameter(torch.randn(side * side + 1, channels) * channels**-0.5)
        self.attn = Attention(channels, heads=channels // head_dim, head_dim=head_dim, qkv_bias=True)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, out)."""
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.position  # (B, 1 + HW, C)
        return self.proj(self.attn(tokens)[:, 0])  # (B, out)


class NoisyClassifier(nn.Module):
    """x_t (B, C, H, W), t (B,) -> logits (B, num_labels); ADM's EncoderUNetModel (Dhariwal & Nichol 2021, sec. 4)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        unet = UNet(config.unet)  # its up path and output conv are dropped with it
        self.time_embed, self.conv_in, self.down, self.mid = unet.time_embed, unet.conv_in, unet.down, unet.mid
        ch = config.block_channels[-1]
        self.norm = nn.GroupNorm(config.norm_groups, ch)
        self.pool = AttentionPool2d(config.pool_size, ch, config.head_dim, config.num_labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"NoisyClassifier: x must be (B, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # (B,)
        emb = self.time_embed(timestep_embedding(t, cfg.block_channels[0]).to(x.dtype))  # (B, E)
        h = self.conv_in(x)  # (B, C0, H, W)
        for block in self.down:
            h = block(h, emb, None, None)
        h = self.mid(h, emb, None, None)  # (B, C_last, pool_size, pool_size)
        return self.pool(F.silu(self.norm(h)))  # (B, num_labels)
