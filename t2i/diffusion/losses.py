"""The training loss for any denoiser: weighted |D(x0 + sigma eps, sigma) - x0|^2.

Every parameterization's MSE is an x0-space MSE times a weight of sigma (eps: snr, v: snr + 1,
x0: 1, EDM: lambda(sigma)), so one loss serves them all. "uniform" uses the denoiser's own
weight (the plain MSE on its target); "min_snr" uses min(snr, gamma), Min-SNR-gamma weighting
(Hang et al. 2023, eq. 8), which is the same x0-space weight for every target.
"""

from __future__ import annotations

from typing import Callable

import torch

from t2i.diffusion.denoisers import Cond, append_dims
from t2i.diffusion.schedules import snr


def _uniform(denoiser, sigma: torch.Tensor, gamma: float) -> torch.Tensor:
    return denoiser.loss_weight(sigma)


def _min_snr(denoiser, sigma: torch.Tensor, gamma: float) -> torch.Tensor:
    return snr(sigma).clamp(max=gamma)


WEIGHTINGS: dict[str, Callable] = {"uniform": _uniform, "min_snr": _min_snr}


def training_draw(denoiser, x0: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma (B,), noise like x0) for a training batch x0 (B, ...): sigmas from the denoiser's
    `sample_training_sigmas`, unit noise drawn on the generator's device, both from `generator`."""
    sigma = denoiser.sample_training_sigmas(x0.shape[0], generator)
    device = generator.device if generator is not None else x0.device
    dtype = torch.float32 if x0.dtype != torch.float64 else x0.dtype
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype).to(x0.device)
    return sigma, noise


def diffusion_loss(denoiser, x0: torch.Tensor, cond: Cond | None = None, *, weighting: str = "uniform",
                   gamma: float = 5.0, sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   reduce: bool = True) -> torch.Tensor:
    """Mean (or per-sample, reduce=False) weighted denoising loss on a batch x0 (B, ...).

    Sigmas and noise are drawn from the global RNG unless given (`training_draw` draws both from a
    generator).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose from {sorted(WEIGHTINGS)}")
    b = x0.shape[0]
    if sigma is None or noise is None:
        drawn_sigma, drawn_noise = training_draw(denoiser, x0)
        sigma = drawn_sigma if sigma is None else sigma
        noise = drawn_noise if noise is None else noise
    sigma = sigma.to(device=x0.device, dtype=torch.float32 if x0.dtype != torch.float64 else x0.dtype)
    x0 = x0.to(sigma.dtype)
    x = x0 + append_dims(sigma, x0.ndim) * noise  # the forward process, VE form
    x0_hat = denoiser(x, sigma, cond).to(sigma.dtype)
    per_sample = (x0_hat - x0).pow(2).reshape(b, -1).mean(dim=1)
    loss = WEIGHTINGS[weighting](denoiser, sigma, gamma) * per_sample
    return loss.mean() if reduce else loss
