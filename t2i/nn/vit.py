"""A ViT image tower (Dosovitskiy et al. 2021) on the pre-LN blocks of t2i/nn/transformer.py, optionally noise-aware.

Patches -> tokens by a strided conv, a class token in front, learned position embeddings, a
pre-LN `Transformer`, a final LayerNorm; the pooled vector is the class token, optionally
projected (CLIP's `visual.proj`, Radford et al. 2021). With `timestep = True` the tower is
GLIDE's noise-aware image encoder (Nichol et al. 2021, sec. 3.3): it takes (x_t, t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from t2i.config import Config
from t2i.nn.embeddings import TimestepMLP, timestep_embedding
from t2i.nn.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class ViTConfig(Config):
    """Image side, patch size, the transformer stack, an optional pooled projection and timestep input."""

    image_size: int = 64
    patch_size: int = 8
    in_channels: int = 3
    transformer: TransformerConfig = TransformerConfig(width=256, layers=6, heads=4)
    proj_dim: int = 0  # >0: bias-free linear projection of the pooled class token
    timestep: bool = False  # noise-aware: forward takes t, embedded and added to every token

    def __post_init__(self) -> None:
        if isinstance(self.transformer, dict):
            object.__setattr__(self, "transformer", TransformerConfig.from_dict(self.transformer))
        for key in ("image_size", "patch_size", "in_channels"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key} = {getattr(self, key)!r}: must be an integer >= 1")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size = {self.image_size}: must be divisible by patch_size = {self.patch_size}")
        if self.proj_dim < 0:
            raise ValueError(f"proj_dim = {self.proj_dim}: must be >= 0")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    """Images (B, C, H, W) [, t (B,)] -> (pooled (B, D'), tokens (B, 1 + N, D)); ViT (Dosovitskiy et al. 2021).

    The timestep is added to every token rather than appended as an extra token: every token,
    the class token included, knows the noise level from the first block on, and the sequence
    (and the position table) keeps one layout for both variants.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        width = config.transformer.width
        self.patch_embedding = nn.Conv2d(config.in_channels, width, config.patch_size, stride=config.patch_size,
                                         bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.position_embedding = nn.Parameter(torch.randn(1 + config.num_patches, width) * 0.01)
        self.time_embedding = TimestepMLP(width, width) if config.timestep else None
        self.pre_norm = nn.LayerNorm(width, eps=config.transformer.eps)  # CLIP's ln_pre
        self.transformer = Transformer(config.transformer)
        self.final_norm = nn.LayerNorm(width, eps=config.transformer.eps)
        self.proj = nn.Linear(width, config.proj_dim, bias=False) if config.proj_dim else None

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) of side image_size; t (B,) timesteps, required iff the config is noise-aware."""
        cfg = self.config
        if (t is not None) != cfg.timestep:
            raise ValueError("this ViT is noise-aware: pass timesteps t" if cfg.timestep
                             else "this ViT is not noise-aware (timestep = False): it takes no t")
        if tuple(x.shape[-3:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"expected images (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(x.shape)}")
        h = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_embedding.to(h.dtype).expand(h.shape[0], 1, -1)  # (B, 1, D)
        h = torch.cat([cls, h], dim=1) + self.position_embedding.to(h.dtype)  # (B, 1 + N, D)
        if self.time_embedding is not None:
            temb = self.time_embedding(timestep_embedding(t, cfg.transformer.width).to(h.device, h.dtype))  # (B, D)
            h = h + temb[:, None]  # (B, 1 + N, D)
        h = self.final_norm(self.transformer(self.pre_norm(h)))
        pooled = h[:, 0]  # (B, D)
        if self.proj is not None:
            pooled = self.proj(pooled)  # (B, proj_dim)
        return pooled, h
