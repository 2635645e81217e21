"""Sampling and schedule settings of a stage, as frozen configs saved in system.json: which beta
schedule the network was trained on, and which sampler, steps, spacing and initial noise draw it."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from t2i.config import Config, check_fields  # noqa: F401  (check_fields re-exported)
from t2i.diffusion.guidance import parse_threshold
from t2i.diffusion.samplers import SAMPLERS
from t2i.diffusion.schedules import BETA_SCHEDULES, TIMESTEP_SPACINGS, DiscreteSchedule, karras_sigmas


@dataclass(frozen=True)
class ScheduleConfig(Config):
    """The training noise schedule: a named beta schedule over `timesteps` steps (DDPM, LDM)."""

    name: str = "scaled_linear"  # linear | scaled_linear | cosine
    timesteps: int = 1000
    beta_start: float = 0.00085  # linear / scaled_linear only
    beta_end: float = 0.012

    @classmethod
    def named(cls, name: str, timesteps: int = 1000) -> "ScheduleConfig":
        """A named schedule with that schedule's own default betas (what `DiscreteSchedule.named` builds)."""
        params = inspect.signature(BETA_SCHEDULES[name]).parameters
        return cls(name, timesteps, **{k: params[k].default for k in ("beta_start", "beta_end") if k in params})

    def build(self) -> DiscreteSchedule:
        if self.name == "cosine":
            return DiscreteSchedule.named("cosine", n=self.timesteps)
        return DiscreteSchedule.named(self.name, n=self.timesteps, beta_start=self.beta_start, beta_end=self.beta_end)


@dataclass(frozen=True)
class SamplingConfig(Config):
    """Default sampler settings of a system, and the timestep conventions that make a loaded
    diffusers scheduler's sigmas and initial noise come out exactly as diffusers computes them."""

    sampler: str = "dpmpp_2m"
    steps: int = 50
    guidance: float = 7.5  # classifier-free guidance scale; <= 1 runs the conditional model alone
    spacing: str = "leading"  # leading | trailing | linspace (see t2i.diffusion.schedules)
    offset: int = 1  # added to "leading" timesteps (diffusers' steps_offset)
    karras: bool = False  # Karras et al. 2022 sigmas instead of a timestep spacing
    round_timesteps: bool = False  # integer timesteps (diffusers' DDIM / DDPM / DPM-Solver linspace)
    extra_step: bool = False  # space steps + 1 timesteps and drop the last (diffusers' DPM-Solver)
    final_sigma: str = "zero"  # zero | min: stop at the schedule's smallest sigma (DDIM, set_alpha_to_one=False)
    init_noise: str = "vp"  # vp: x_T = noise * sqrt(1 + sigma_0^2); sigma: x_T = noise * sigma_0 (k-diffusion)
    eta: float = 0.0  # DDIM's eta
    clip_sample: float = 0.0  # > 0: clip x0 predictions to [-clip_sample, clip_sample]
    model_eps: bool = False  # DDIM steps along the network's eps, not the thresholded x0's (diffusers' DDIM)
    threshold: str = ""  # the stage's own thresholding (parse_threshold, e.g. IF's "dynamic:0.95:1.5"); "": clip_sample

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(sorted(SAMPLERS))}")
        if self.spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.spacing!r}; choose from {', '.join(TIMESTEP_SPACINGS)}")
        if self.final_sigma not in ("zero", "min") or self.init_noise not in ("vp", "sigma"):
            raise ValueError("final_sigma must be 'zero' or 'min' and init_noise 'vp' or 'sigma'")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.threshold:
            parse_threshold(self.threshold)

    def timesteps(self, schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
        """Descending (possibly fractional) timesteps of `steps` model evaluations."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        extra = self.extra_step and self.spacing != "trailing"
        t = schedule.timesteps(steps + 1 if extra else steps, self.spacing, self.offset)
        t = t[:-1] if extra else t
        return t.round() if self.round_timesteps else t

    def sigmas(self, schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
        """Descending sigmas for `steps` steps, ending with the final sigma (0, or the smallest)."""
        if self.karras:
            sig = karras_sigmas(steps, schedule.sigma_min, schedule.sigma_max)[:-1]
        else:
            sig = schedule.t_to_sigma(self.timesteps(schedule, steps))
        final = schedule.sigmas[:1] if self.final_sigma == "min" else sig.new_zeros(1)
        return torch.cat([sig, final.to(sig)])

    def noise_scale(self, sigma0: float) -> float:
        """Std of the initial sample x_T (VE form) for unit noise at sigma_0."""
        return math.sqrt(1 + sigma0**2) if self.init_noise == "vp" else sigma0
