"""Samplers: pure functions sampler(denoiser, x, sigmas, *, cond, generator, callback) -> x.

x is the VE-form sample at sigmas[0]; sigmas descend to sigmas[-1] (0 for a clean sample).
Each step evaluates the denoiser D(x, sigma, cond) -> x0_hat once (Heun: twice) and works on
any tensor shape: pixels, latents, embedding vectors. Noise is drawn from `generator` on its
own device with x's dtype, as diffusers' `randn_tensor` draws it, so seeds give the same
images under both; `generator` is one generator for the whole batch, or a list of them, one per
row (per-image noise: a row's draws do not depend on the rest of the batch).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from t2i.diffusion.denoisers import Cond, Denoiser, append_dims, batch_sigma, denoise_v, split_x0

# callback(i, x, x0_hat, sigma) after each step i: progress bars, previews, tests. x is the sample at
# sigmas[i + 1]; a callback may edit it in place and the sampler goes on from the edit (mask blending).
Callback = Optional[Callable[[int, torch.Tensor, torch.Tensor, float], None]]


# where a sampler's noise comes from: one generator for the batch, or one per row of the batch (diffusers'
# list of generators); None: torch's global generator
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def randn(shape: torch.Size | tuple, like: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default) then moved to `like`; with a list of
    generators, row i of the batch (shape[0]) drawn from generator i alone (diffusers' `randn_tensor`), so a row's
    noise is what the same generator gives a batch of one."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: give one per row")
        return torch.cat([randn((1, *shape[1:]), like, g) for g in generator])  # (B, ...)
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None) -> torch.Tensor:
    return denoiser(x, batch_sigma(sigma, x), cond)


def _vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod of a VE sigma: a = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma**2)


def euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
          generator: Generators = None, callback: Callback = None) -> torch.Tensor:
    """Euler on the probability-flow ODE dx/dsigma = (x - D) / sigma (Karras et al. 2022, alg. 1)."""
    sigmas = sigmas.to(x.dtype)
    for i in range(len(sigmas) - 1):
        x0 = _denoise(denoiser, x, sigmas[i], cond)
        d = (x - x0) / sigmas[i]  # EDM eq. 3
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if callback:
            callback(i, x, x0, float(sigmas[i]))
    return x


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of an ancestral step: a deterministic move to sigma_down, then fresh
    noise of std sigma_up, so the marginal lands at sigma_to (k-diffusion get_ancestral_step)."""
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).sqrt())
    sigma_down = (sigma_to**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


def euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
                    generator: Generators = None, callback: Callback = None,
                    eta: float = 1.0) -> torch.Tensor:
    """Euler to sigma_down, then noise to sigma_next (k-diffusion sample_euler_ancestral)."""
    sigmas = sigmas.to(x.dtype)
    for i in range(len(sigmas) - 1):
        x0 = _denoise(denoiser, x, sigmas[i], cond)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + (x - x0) / sigmas[i] * (sigma_down - sigmas[i])
        x = x + randn(x.shape, x, generator) * sigma_up
        if callback:
            callback(i, x, x0, float(sigmas[i]))
    return x


def heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
         generator: Generators = None, callback: Callback = None) -> torch.Tensor:
    """Heun's 2nd-order method, Euler on the last step to sigma = 0 (Karras et al. 2022, alg. 1)."""
    sigmas = sigmas.to(x.dtype)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = _denoise(denoiser, x, sigma, cond)
        d = (x - x0) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - _denoise(denoiser, x_euler, sigma_next, cond)) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)  # EDM alg. 1, line 8
        if callback:
            callback(i, x, x0, float(sigma))
    return x


def ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
         generator: Generators = None, callback: Callback = None, eta: float = 0.0,
         model_eps: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), written in the VE form; eta=0 is deterministic and
    invertible, eta=1 gives DDPM's posterior variance. With eta > 0 noise is drawn every step.
    The direction term uses the eps of the thresholded x0 (guided-diffusion), or with `model_eps` the
    network's own eps from below any thresholding (`split_x0`; diffusers' DDIMScheduler)."""
    sigmas = sigmas.to(x.dtype)
    for i in range(len(sigmas) - 1):
        x0, raw = split_x0(denoiser, x, batch_sigma(sigmas[i], x), cond)
        eps = (x - (raw if model_eps else x0)) / sigmas[i]
        a_t, a_prev = _vp_alpha(sigmas[i]), _vp_alpha(sigmas[i + 1])
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()  # DDIM eq. 16
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps  # DDIM eq. 12 (VP form)
        if eta > 0:
            x_prev = x_prev + std * randn(x.shape, x, generator)
        x = x_prev / a_prev.sqrt()
        if callback:
            callback(i, x, x0, float(sigmas[i]))
    return x


def ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
         generator: Generators = None, callback: Callback = None) -> torch.Tensor:
    """DDPM ancestral sampling from the posterior q(x_prev | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7), between
    any two sigmas of the chain, with the "fixed small" variance beta_tilde, or the network's learned one
    when the denoiser gives a value v (`denoise_v`; Nichol & Dhariwal 2021, eq. 15, "learned_range")."""
    sigmas = sigmas.to(x.dtype)
    for i in range(len(sigmas) - 1):
        x0, v = denoise_v(denoiser, x, batch_sigma(sigmas[i], x), cond)
        a_t, a_prev = _vp_alpha(sigmas[i]), _vp_alpha(sigmas[i + 1])
        alpha, beta = a_t / a_prev, 1 - a_t / a_prev
        x_t = x * a_t.sqrt()
        mean = (a_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - a_prev) * x_t) / (1 - a_t)  # DDPM eq. 7
        if sigmas[i + 1] > 0:
            var = (1 - a_prev) / (1 - a_t) * beta  # beta_tilde, DDPM eq. 7
            if v is None:
                std = var.sqrt()
            else:
                frac = (v + 1) / 2
                std = (0.5 * (frac * beta.log() + (1 - frac) * var.clamp(min=1e-20).log())).exp()  # IDDPM eq. 15
            mean = mean + std * randn(x.shape, x, generator)
        x = mean / a_prev.sqrt()
        if callback:
            callback(i, x, x0, float(sigmas[i]))
    return x


def dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
             generator: Generators = None, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep, in lambda = -log sigma (Lu et al. 2022, alg. 2); first order on
    the first step and on the last step to sigma = 0, as diffusers and k-diffusion do."""
    sigmas = sigmas.to(x.dtype)
    old_x0, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = _denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:
            x = x0
        else:
            h = sigma.log() - sigma_next.log()
            if old_x0 is None:
                d = x0
            else:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0  # DPM-Solver++ alg. 2, line 6
            x = (sigma_next / sigma) * x - torch.expm1(-h) * d
            h_last = h
        old_x0 = x0
        if callback:
            callback(i, x, x0, float(sigma))
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "euler_a": euler_ancestral,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
