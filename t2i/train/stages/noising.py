"""What stages that train noise-aware networks share (GLIDE's classifier and noisy CLIP, Nichol et al. 2021,
sec. 2.3-2.4): the check of their noise schedule, and images noised per sample as the diffusion stage does."""

from __future__ import annotations

import torch

from t2i.train.config import bad
from t2i.train.rng import SampleRNG


def check_schedule(schedule: str, timesteps: int) -> None:
    """A named beta schedule of at least 2 timesteps, or a RecipeError naming the key."""
    from t2i.diffusion.schedules import BETA_SCHEDULES

    if schedule not in BETA_SCHEDULES:
        raise bad("schedule", schedule, f"must be one of {', '.join(sorted(BETA_SCHEDULES))}")
    if timesteps < 2:
        raise bad("timesteps", timesteps, "must be at least 2")


def noised(x0: torch.Tensor, denoiser, rng: SampleRNG) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 + sigma eps, sigma): VE form; sigma (B,) from `denoiser.sample_training_sigmas`, eps per sample from rng."""
    from t2i.diffusion.denoisers import append_dims

    sigma = rng.each(lambda g: denoiser.sample_training_sigmas(1, g))  # (B,)
    noise = rng.randn(tuple(x0.shape[1:])).to(x0)  # (B, C, H, W)
    return x0 + append_dims(sigma.to(x0), x0.ndim) * noise, sigma
