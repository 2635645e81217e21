"""Guidance and thresholding as wrappers: each takes a denoiser and returns a denoiser."""

from __future__ import annotations

from typing import Callable

import torch

from t2i.diffusion.denoisers import Cond, Denoiser, append_dims

# log p(y | x_t) as a function of (x, sigma, cond): x in VE form, sigma a (B,) tensor.
LogProb = Callable[[torch.Tensor, torch.Tensor, Cond | None], torch.Tensor]


def concat_cond(a: Cond | None, b: Cond | None) -> dict[str, torch.Tensor]:
    """Two conditionings stacked along the batch: every key must be in both."""
    a, b = dict(a or {}), dict(b or {})
    if a.keys() != b.keys():
        raise ValueError(f"conditionings differ in keys: {sorted(a)} vs {sorted(b)}")
    return {k: torch.cat([a[k], b[k]]) for k in a}


class ClassifierFreeGuidance:
    """D_w = D(x, uncond) + w (D(x, cond) - D(x, uncond)) (Ho & Salimans 2022, eq. 6).

    `uncond` is the unconditional (empty-caption) conditioning, or a negative prompt's. Both
    branches run in one batch of 2B; at w = 1 only the conditional branch runs.
    """

    def __init__(self, denoiser: Denoiser, scale: float, uncond: Cond | None):
        self.denoiser, self.scale, self.uncond = denoiser, scale, uncond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        if self.scale == 1.0:
            return self.denoiser(x, sigma, cond)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), concat_cond(self.uncond, cond))
        x0_uncond, x0_cond = both.chunk(2)
        return x0_uncond + self.scale * (x0_cond - x0_uncond)


class GradientGuidance:
    """D' = D + s sigma^2 grad_x log p(y | x, sigma): classifier guidance (Dhariwal & Nichol 2021,
    alg. 2, eps_hat - sqrt(1 - a) s grad) in the VE form; CLIP guidance (Nichol et al. 2022) when
    log p is the noisy-CLIP image-caption dot product."""

    def __init__(self, denoiser: Denoiser, log_prob: LogProb, scale: float):
        self.denoiser, self.log_prob, self.scale = denoiser, log_prob, scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        x0 = self.denoiser(x, sigma, cond)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x_in, sigma, cond).sum(), x_in)
        return x0 + self.scale * append_dims(sigma, x.ndim) ** 2 * grad


class StaticThreshold:
    """Clip x0_hat to [-limit, limit] (Ho et al. 2020; Saharia et al. 2022, sec. 2.3)."""

    def __init__(self, denoiser: Denoiser, limit: float = 1.0):
        self.denoiser, self.limit = denoiser, limit

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.denoiser(x, sigma, cond).clamp(-self.limit, self.limit)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = max(1, the percentile of
    |x0| per sample); x0 <- clip(x0, -s, s) / s."""
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = append_dims(s, x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


class DynamicThreshold:
    """Wrapper applying `dynamic_threshold` to every x0 prediction."""

    def __init__(self, denoiser: Denoiser, percentile: float = 0.995):
        if not 0.0 < percentile <= 1.0:
            raise ValueError(f"percentile must be in (0, 1], got {percentile}")
        self.denoiser, self.percentile = denoiser, percentile

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return dynamic_threshold(self.denoiser(x, sigma, cond), self.percentile)
