"""The front door: sigmas for a denoiser, the initial noise, and one call that samples."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from t2i.diffusion.denoisers import Cond, Denoiser
from t2i.diffusion.samplers import Callback, Generators, get_sampler, randn
from t2i.diffusion.schedules import TIMESTEP_SPACINGS, karras_sigmas

SPACINGS = sorted(TIMESTEP_SPACINGS) + ["karras"]


def sampling_sigmas(denoiser: Denoiser, steps: int, spacing: str = "leading", offset: int = 0) -> torch.Tensor:
    """Descending sigmas ending with 0: the schedule's timestep spacings for discrete-time
    denoisers, or Karras et al.'s rho-spacing (any denoiser with sigma_min / sigma_max)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if spacing == "karras":
        return karras_sigmas(steps, denoiser.sigma_min, denoiser.sigma_max)
    schedule = getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ValueError(f"spacing {spacing!r} needs a discrete-time denoiser; use 'karras'")
    return schedule.sampling_sigmas(steps, spacing, offset)


def check_sigmas(sigmas: torch.Tensor) -> None:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D tensor with at least two entries (one step)")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ValueError("sigmas must be finite and non-negative")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError("sigmas must not increase")


def sample(denoiser: Denoiser, shape: Sequence[int], *, steps: int = 50, sampler: str = "dpmpp_2m",
           spacing: str = "leading", cond: Cond | None = None, generator: Generators = None,
           dtype: torch.dtype = torch.float32, **sampler_options: float) -> torch.Tensor:
    """Draw samples of `shape` (B, ...) on the CPU: noise from `generator` (or a list, one per row) scaled to the
    first sigma, then `steps` steps of `sampler` over the denoiser's sigmas at `spacing`. To start from another
    sample (img2img, a caller's own noise, another device), draw it and call `run_sampler`."""
    sigmas = sampling_sigmas(denoiser, steps, spacing)
    noise = randn(tuple(shape), torch.empty((), dtype=dtype), generator)
    x = noise * denoiser.noise_scale(float(sigmas[0]))
    return run_sampler(denoiser, x, sigmas, sampler=sampler, cond=cond, generator=generator, **sampler_options)


def run_sampler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, sampler: str, cond: Cond | None = None,
                generator: Generators = None, callback: Callback = None,
                **sampler_options: float) -> torch.Tensor:
    """Run a sampler by name from the VE sample `x` at sigmas[0] down `sigmas` (checked), on x's device."""
    sampler_fn = get_sampler(sampler)
    check_sigmas(sigmas)
    return sampler_fn(denoiser, x, sigmas.to(x.device), cond=cond, generator=generator, callback=callback,
                      **sampler_options)


# --- pure helpers of a stage's sampling ----------------------------------------------------------


def img2img_sigmas(sigmas: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """The tail of `sigmas` (steps + 1 entries) that img2img at `strength` runs: diffusers'
    get_timesteps skips the first steps - int(steps * strength)."""
    tail = sigmas[steps - min(int(steps * strength), steps):]
    if len(tail) < 2:
        raise ValueError(f"strength {strength} with {steps} steps leaves no step to run")
    return tail


def initial_sample(noise: torch.Tensor, sigma0: float, noise_scale: float, start: torch.Tensor | None) -> torch.Tensor:
    """x at the first sigma (VE form): unit `noise` scaled to `noise_scale` (pure noise), or a clean
    sample `start` plus noise at sigma0 (img2img)."""
    return noise * noise_scale if start is None else start + noise * sigma0


def to_vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A VE-form sample at `sigma` in VP form, x / sqrt(1 + sigma^2) (the sample diffusers decodes)."""
    return x / math.sqrt(1 + float(sigma) ** 2)


def mask_blend(repaint: torch.Tensor, known_x0: torch.Tensor, noise: torch.Tensor,
               sigmas: torch.Tensor) -> Callable[[int, torch.Tensor], None]:
    """Inpainting with any model (Lugmayr et al. 2022, RePaint's known-region step, as diffusers does):
    a sampler callback that, after step i, sets the kept region (repaint = 0) to the clean sample
    `known_x0` (an image's latents or pixels) noised to sigmas[i + 1] with the initial noise; after
    the last step, to the clean sample itself (in the VE form of the final sigma)."""

    def blend(i: int, x: torch.Tensor) -> None:
        s = float(sigmas[i + 1])
        last = i == len(sigmas) - 2
        known = known_x0 * math.sqrt(1 + s**2) if last else known_x0 + noise * s
        x.copy_(repaint * x + (1 - repaint) * known)  # the sampler goes on from the edited x

    return blend
