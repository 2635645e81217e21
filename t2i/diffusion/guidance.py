"""Guidance and thresholding as wrappers: each takes a denoiser and returns a denoiser."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from t2i.diffusion.denoisers import (Cond, Denoiser, DenoiserWrapper, X0Map, append_dims, batch_sigma, denoise_v,
                                     timestep_inputs)
from t2i.diffusion.schedules import DiscreteSchedule

# log p(y | x_t) as a function of (x, sigma, cond): x in VE form, sigma a (B,) tensor.
LogProb = Callable[[torch.Tensor, torch.Tensor, Cond | None], torch.Tensor]


def concat_cond(a: Cond | None, b: Cond | None) -> dict[str, torch.Tensor]:
    """Two conditionings stacked along the batch: every key must be in both."""
    a, b = dict(a or {}), dict(b or {})
    if a.keys() != b.keys():
        raise ValueError(f"conditionings differ in keys: {sorted(a)} vs {sorted(b)}")
    return {k: torch.cat([a[k], b[k]]) for k in a}


class ClassifierFreeGuidance(DenoiserWrapper):
    """D_w = D(x, uncond) + w (D(x, cond) - D(x, uncond)) (Ho & Salimans 2022, eq. 6).

    `uncond` is the unconditional (empty-caption) conditioning, or a negative prompt's. Both
    branches run in one batch of 2B; at w = 1 only the conditional branch runs. A learned variance is the
    conditional branch's (GLIDE's and DeepFloyd IF's sampling).
    """

    def __init__(self, denoiser: Denoiser, scale: float, uncond: Cond | None):
        super().__init__(denoiser)
        self.scale, self.uncond = scale, uncond

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor,
                      cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.scale == 1.0:
            return denoise_v(self.denoiser, x, sigma, cond)
        both, v = denoise_v(self.denoiser, torch.cat([x, x]), torch.cat([sigma, sigma]), concat_cond(self.uncond, cond))
        x0_uncond, x0_cond = both.chunk(2)
        return x0_uncond + self.scale * (x0_cond - x0_uncond), None if v is None else v.chunk(2)[1]


class GradientGuidance(DenoiserWrapper):
    """D' = D + s sigma^2 grad_x log p(y | x, sigma): classifier guidance (Dhariwal & Nichol 2021,
    alg. 2, eps_hat - sqrt(1 - a) s grad) in the VE form; CLIP guidance (Nichol et al. 2022) when
    log p is the noisy-CLIP image-caption dot product."""

    def __init__(self, denoiser: Denoiser, log_prob: LogProb, scale: float):
        super().__init__(denoiser)
        self.log_prob, self.scale = log_prob, scale

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor,
                      cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0, v = denoise_v(self.denoiser, x, sigma, cond)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x_in, sigma, cond).sum(), x_in)
        return x0 + self.scale * append_dims(sigma, x.ndim) ** 2 * grad, v


class TimestepNet:
    """A network indexed by timestep, net(x_vp, t), as a function of the VE-form (x, sigma): it sees
    x / sqrt(sigma^2 + 1) and t = schedule.sigma_to_t(sigma), as DiscreteDenoiser feeds its net (for noisy
    classifiers and noisy CLIP towers, GLIDE sec. 2.3-2.4)."""

    def __init__(self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: DiscreteSchedule):
        self.net, self.schedule = net, schedule

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(*timestep_inputs(x, batch_sigma(sigma, x), self.schedule))


def any_of_log_prob(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """sum_g log P(some label of group g is on) under independent sigmoids: logits (B, K), groups (B|1, G, K)
    bool -> (B,). log P = log(1 - prod_k (1 - p_k)); a one-label group gives log sigmoid(logit); an empty
    group constrains nothing (0)."""
    m = groups.to(logits.dtype)  # (B|1, G, K)
    none = (m * F.logsigmoid(-logits)[:, None, :]).sum(-1)  # (B, G): log P(no label of g is on)
    empty = ~groups.any(-1)  # (B|1, G)
    none = torch.where(empty, -1.0, none).clamp(max=-torch.finfo(logits.dtype).tiny)
    return torch.where(empty, 0.0, torch.log(-torch.expm1(none))).sum(-1)  # (B,)


def classifier_log_prob(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        groups: torch.Tensor) -> LogProb:
    """log p(y | x_t) of a noise-aware multi-label classifier, logits_fn(x, sigma) -> (B, K), for
    `GradientGuidance` (classifier guidance: Dhariwal & Nichol 2021, alg. 2; GLIDE sec. 2.3). y is
    "some label of each group is on" (`any_of_log_prob`): groups (B|1, G, K) bool."""

    def log_prob(x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return any_of_log_prob(logits_fn(x, sigma), groups.to(x.device))  # (B,)

    return log_prob


def clip_log_prob(image_embed_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], text_embed: torch.Tensor,
                  scale: float = 1.0) -> LogProb:
    """scale * <f(x_t, sigma), g(c)>, the noisy-CLIP image-caption dot product whose gradient GLIDE's CLIP
    guidance follows (Nichol et al. 2021, sec. 2.4): image_embed_fn(x, sigma) -> (B, E), text_embed (B|1, E)."""

    def log_prob(x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return scale * (image_embed_fn(x, sigma) * text_embed.to(x)).sum(-1)  # (B,)

    return log_prob


class StaticThreshold(X0Map):
    """Clip x0_hat to [-limit, limit] (Ho et al. 2020; Saharia et al. 2022, sec. 2.3)."""

    def __init__(self, denoiser: Denoiser, limit: float = 1.0):
        super().__init__(denoiser)
        self.limit = limit

    def x0_map(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-self.limit, self.limit)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995, cap: float | None = None) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = max(1, the percentile of
    |x0| per sample), at most `cap` if given (DeepFloyd IF's sample_max_value); x0 <- clip(x0, -s, s) / s."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    flat = flat if flat.dtype == torch.float64 else flat.float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0, max=cap).to(x0.dtype)
    s = append_dims(s, x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def percentile_fraction(p: float) -> float:
    """A percentile as the fraction `dynamic_threshold` takes: p in (0, 1] is a fraction, p in (1, 100] a
    percentage (the paper's 99.5 == 0.995; Saharia et al. 2022, sec. 2.3); anything else is a one-line error."""
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (0, 100] (a fraction in (0, 1] or a percentage in (1, 100]), got {p}")
    return p / 100.0 if p > 1.0 else float(p)


class DynamicThreshold(X0Map):
    """Wrapper applying `dynamic_threshold` to every x0 prediction; percentile as `percentile_fraction` reads it."""

    def __init__(self, denoiser: Denoiser, percentile: float = 0.995, cap: float | None = None):
        super().__init__(denoiser)
        self.percentile, self.cap = percentile_fraction(percentile), cap

    def x0_map(self, x0: torch.Tensor) -> torch.Tensor:
        return dynamic_threshold(x0, self.percentile, self.cap)


THRESHOLDS = ("none", "static", "dynamic")


def parse_threshold(spec: str) -> tuple[str, float, float | None]:
    """"none" | "static[:limit]" | "dynamic[:p[:cap]]" -> (kind, value, cap); ValueError in one line. p > 1 is a
    percentage, p <= 1 a fraction: "dynamic:99.5" == "dynamic:0.995" -> ("dynamic", 0.995, None)
    (`percentile_fraction`); cap >= 1 bounds s (DeepFloyd IF: "dynamic:0.95:1.5")."""
    kind, _, value = str(spec).partition(":")
    value, _, cap = value.partition(":")
    if kind not in THRESHOLDS or (kind == "none" and value) or (kind != "dynamic" and cap):
        raise ValueError(f"unknown threshold {spec!r}; choose none, static[:limit] or dynamic[:percentile[:cap]]")
    try:
        v = float(value) if value else (1.0 if kind == "static" else 0.995)
        c = float(cap) if cap else None
    except ValueError:
        raise ValueError(f"threshold {spec!r}: {value!r} / {cap!r} is not a number") from None
    if kind == "static" and not 0.0 < v < float("inf"):
        raise ValueError(f"threshold {spec!r}: a static limit must be finite and > 0")
    if c is not None and not 1.0 <= c < float("inf"):
        raise ValueError(f"threshold {spec!r}: the cap on s must be finite and >= 1")
    try:
        return kind, percentile_fraction(v) if kind == "dynamic" else v, c
    except ValueError as e:
        raise ValueError(f"threshold {spec!r}: {e}") from None


def thresholded(denoiser: Denoiser, spec: str) -> Denoiser:
    """The denoiser behind the thresholding `spec` names (`parse_threshold`); itself for "none"."""
    kind, value, cap = parse_threshold(spec)
    if kind == "static":
        return StaticThreshold(denoiser, value)
    return DynamicThreshold(denoiser, value, cap) if kind == "dynamic" else denoiser
