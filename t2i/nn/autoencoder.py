"""KL-regularised autoencoder, the first stage of latent diffusion (Rombach et al. 2022, LDM, sec. 3).

Architecture as in LDM / diffusers `AutoencoderKL`: conv encoder -> quant_conv -> diagonal
Gaussian over latents; post_quant_conv -> conv decoder; one single-head self-attention in each
middle block. Public checkpoints are mapped in `t2i/io/diffusers_vae.py`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config
from t2i.nn.attention import Attention
from t2i.nn.distributions import DiagonalGaussian

EPS = 1e-6  # GroupNorm eps of every LDM / diffusers VAE


@dataclass(frozen=True)
class AutoencoderConfig(Config):
    """Shape of a KL autoencoder; defaults are Stable Diffusion's VAE (f=8, 4 latent channels)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (128, 256, 512, 512)  # per level; len-1 downsamplings by 2
    layers_per_block: int = 2  # res-blocks per encoder level (the decoder has one more)
    norm_groups: int = 32
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215  # latents fed to diffusion are (z - shift_factor) * scaling_factor
    shift_factor: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or self.layers_per_block < 1:
            raise ValueError("AutoencoderConfig needs at least one level and one res-block per level")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by norm_groups={self.norm_groups}")

    @property
    def downscale(self) -> int:
        """Spatial factor between image and latent (8 for SD)."""
        return 2 ** (len(self.channels) - 1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=EPS)


class ResBlock(nn.Module):
    """Time-free residual block: (GN, SiLU, conv) x 2 plus a 1x1 skip when channels change."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual: x + Attn(GN(x)) over the HW tokens."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.attn = Attention(channels, heads=1, head_dim=channels, qkv_bias=True, out_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out = self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class MidBlock(nn.Module):
    """ResBlock -> (attention) -> ResBlock at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.res1 = ResBlock(channels, channels, groups)
        self.attn = AttnBlock(channels, groups) if attention else None
        self.res2 = ResBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after asymmetric (0, 1, 0, 1) zero padding, as LDM's encoder does."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """Res-blocks at one resolution, then an optional resampler (Downsample or Upsample)."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, groups: int, resample: type[nn.Module] | None):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_blocks))
        self.resample = resample(out_ch) if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.resample(x) if self.resample is not None else x


class Encoder(nn.Module):
    """Image (B, C_in, H, W) -> Gaussian moments (B, 2 * latent, H/f, W/f)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.levels = nn.ModuleList(
            Level(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, Downsample if i < len(ch) - 1 else None)
            for i in range(len(ch))
        )
        self.mid = MidBlock(ch[-1], g, cfg.mid_attention)
        self.norm_out = _norm(ch[-1], g)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, latent, h, w) -> image (B, C_out, h*f, w*f); levels run from the lowest resolution up."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, g = tuple(reversed(cfg.channels)), cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid = MidBlock(ch[0], g, cfg.mid_attention)
        self.levels = nn.ModuleList(
            Level(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, Upsample if i < len(ch) - 1 else None)
            for i in range(len(ch))
        )
        self.norm_out = _norm(ch[-1], g)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """LDM first stage: encode(x) -> DiagonalGaussian over latents, decode(z) -> x (Rombach et al. 2022)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        lat = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * lat, 2 * lat, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(lat, lat, 1) if config.use_post_quant_conv else None

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Image (B, C, H, W) in [-1, 1] -> posterior over unscaled latents (B, latent, H/f, W/f)."""
        moments = self.encoder(x)  # (B, 2 * latent, H/f, W/f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, latent, h, w) -> image (B, C, h*f, w*f)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, *, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruction and posterior; decodes a posterior sample (or its mode)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE latents -> the unit-variance latents diffusion works on (LDM sec. 4.3.2)."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents -> latents `decode` takes."""
        return z / self.config.scaling_factor + self.config.shift_factor


def autoencoder_loss(
    model: AutoencoderKL,
    x: torch.Tensor,
    kl_weight: float = 1e-6,
    *,
    reconstruction: str = "l1",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 or L2, summed per image) + kl_weight * KL to N(0, I), both averaged over the batch.

    This is LDM's first-stage objective without its LPIPS perceptual term and patch-GAN
    discriminator (out of scope here), and with the learned output log-variance fixed at 0.
    """
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
    recon, posterior = model(x, sample_posterior=True, generator=generator)
    err = (recon - x).abs() if reconstruction == "l1" else (recon - x).pow(2)
    rec = err.flatten(1).sum(1).mean()
    kl = posterior.kl().mean()
    loss = rec + kl_weight * kl
    logs = {"loss": loss.item(), "rec": rec.item(), "kl": kl.item(), "rec_per_pixel": err.mean().item()}
    return loss, logs
