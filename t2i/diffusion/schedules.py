"""Noise schedules: betas, alphas_cumprod <-> sigmas, respacing, SNR.

Conventions (as in k-diffusion): a discrete variance-preserving (VP) model sees
x_vp = sqrt(a) x0 + sqrt(1 - a) eps at timestep t, a = alphas_cumprod[t]. The samplers work
on the variance-exploding (VE) form x = x_vp / sqrt(a) = x0 + sigma eps with
sigma = sqrt((1 - a) / a), so one sampler serves VP, VE and EDM models alike.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

_F64 = torch.float64


def linear_betas(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al. 2020, sec. 4)."""
    return torch.linspace(beta_start, beta_end, n, dtype=_F64)


def scaled_linear_betas(n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's schedule: linear in sqrt(beta) (Rombach et al. 2022)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=_F64) ** 2


def cosine_betas(n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas clipped at max_beta."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=_F64)


BETA_SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "cosine": cosine_betas}


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1.0 - betas.to(_F64), dim=0)


def betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ac = alphas_cumprod.to(_F64)
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    return 1.0 - ac / prev


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - a) / a): the VE noise level of a VP timestep."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + sigmas**2)


def snr(sigma: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a / (1 - a) = 1 / sigma^2 (Kingma et al. 2021)."""
    return sigma.pow(-2)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """guided-diffusion's respacing: "ddimN" (strided) or per-section counts such as "10,15,20"."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {want} strided steps from {num_timesteps}")
        section_counts = [int(c) for c in section_counts.split(",")]
    size, extra = divmod(num_timesteps, len(section_counts))
    steps, start = [], 0
    for i, count in enumerate(section_counts):
        section = size + (1 if i < extra else 0)
        if count > section:
            raise ValueError(f"cannot take {count} steps from a section of {section}")
        stride = (section - 1) / (count - 1) if count > 1 else 1
        steps += [start + round(j * stride) for j in range(count)]
        start += section
    return sorted(set(steps))


def respace(alphas_cumprod: torch.Tensor, timesteps: Sequence[int]) -> torch.Tensor:
    """Betas of the chain that visits only `timesteps` (guided-diffusion respace.py): 1 - a_t / a_prev."""
    return betas_from_alphas_cumprod(alphas_cumprod.to(_F64)[list(sorted(timesteps))])


class DiscreteSchedule:
    """A discrete-time VP schedule: alphas_cumprod over timesteps 0..T-1 and their sigmas.

    Fractional timesteps interpolate sigma linearly in t, as diffusers' schedulers do, so
    `sigma_to_t` is the exact inverse of `t_to_sigma` and a model sees the same timestep here
    as under diffusers.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=_F64)
        if ac.ndim != 1 or len(ac) < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor of at least 2 timesteps")
        if not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1) and strictly decrease")
        self.alphas_cumprod = ac
        self.sigmas = sigmas_from_alphas_cumprod(ac)  # (T,) increasing

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "DiscreteSchedule":
        return cls(alphas_cumprod_from_betas(betas))

    @classmethod
    def named(cls, name: str, n: int = 1000, **kwargs: float) -> "DiscreteSchedule":
        """A schedule by name: "linear", "scaled_linear" or "cosine"."""
        if name not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule {name!r}; choose from {sorted(BETA_SCHEDULES)}")
        return cls.from_betas(BETA_SCHEDULES[name](n, **kwargs))

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at (possibly fractional) timesteps, linear in t between integers."""
        t = torch.as_tensor(t).detach().to("cpu", _F64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        return (1 - w) * self.sigmas[lo] + w * self.sigmas[lo + 1]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Timestep of a sigma: the inverse of `t_to_sigma` (clamped to [0, T-1])."""
        s = torch.as_tensor(sigma).detach().to("cpu", _F64)
        flat = s.reshape(-1).clamp(self.sigma_min, self.sigma_max)
        lo = (torch.searchsorted(self.sigmas, flat, right=True) - 1).clamp(0, self.num_timesteps - 2)
        w = (flat - self.sigmas[lo]) / (self.sigmas[lo + 1] - self.sigmas[lo])
        return (lo.to(_F64) + w).reshape(s.shape)

    def respaced(self, timesteps: Sequence[int]) -> "DiscreteSchedule":
        """The schedule that visits only `timesteps` (for DDPM-style samplers of a shorter chain)."""
        return DiscreteSchedule.from_betas(respace(self.alphas_cumprod, timesteps))

    def timesteps(self, steps: int, spacing: str = "leading", offset: int = 0) -> torch.Tensor:
        """`steps` descending timesteps, spaced as in the literature (see `TIMESTEP_SPACINGS`)."""
        if spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}; choose from {sorted(TIMESTEP_SPACINGS)}")
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_timesteps}, got {steps}")
        return TIMESTEP_SPACINGS[spacing](self.num_timesteps, steps, offset)

    def sampling_sigmas(self, steps: int, spacing: str = "leading", offset: int = 0) -> torch.Tensor:
        """Descending sigmas for `steps` model evaluations, ending with 0 (the clean sample)."""
        sig = self.t_to_sigma(self.timesteps(steps, spacing, offset))
        return torch.cat([sig, sig.new_zeros(1)])


def _leading(num_train: int, steps: int, offset: int) -> torch.Tensor:
    """DDIM / Stable Diffusion: t_i = i * (T // n) + offset (Song et al. 2021)."""
    ratio = num_train // steps
    return (torch.arange(steps, dtype=_F64) * ratio + offset).flip(0)


def _trailing(num_train: int, steps: int, offset: int) -> torch.Tensor:
    """Ends exactly at T - 1 (Lin et al. 2023, "Common diffusion noise schedules are flawed", table 2)."""
    ratio = num_train / steps
    return torch.round(torch.arange(num_train, 0, -ratio, dtype=_F64)) - 1


def _linspace(num_train: int, steps: int, offset: int) -> torch.Tensor:
    """Evenly spaced, fractional, from T - 1 down to 0 (k-diffusion, diffusers' Euler)."""
    return torch.linspace(num_train - 1, 0, steps, dtype=_F64)


TIMESTEP_SPACINGS = {"leading": _leading, "trailing": _trailing, "linspace": _linspace}


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigmas uniform in sigma^(1/rho), ending with 0."""
    ramp = torch.linspace(0, 1, steps, dtype=_F64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])
