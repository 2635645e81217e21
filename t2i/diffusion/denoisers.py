"""One denoiser signature, D(x, sigma, cond) -> x0_hat, and wrappers that give it to networks.

x is the VE-form sample x0 + sigma * eps (see `schedules`), sigma a (B,) tensor, cond a dict
of batched tensors passed to the network as keyword arguments (`net(x_in, t, **cond)`).
A wrapper owns the preconditioning: the network never sees sigma, only its own input
scaling and time variable (Karras et al. 2022, "EDM", table 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import torch

from t2i.diffusion.schedules import DiscreteSchedule, snr

Cond = Mapping[str, torch.Tensor]


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor: ...


def denoise_v(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor,
              cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x0_hat, v): one call's x0 and the network's learned-variance value v in [-1, 1] (x's shape), None for a
    denoiser without one (Nichol & Dhariwal 2021, "Improved DDPM", eq. 15: log var = frac log beta + ...)."""
    fn = getattr(type(denoiser), "with_variance", None)  # on the type: wrappers forward unknown attributes
    return fn(denoiser, x, sigma, cond) if fn is not None else (denoiser(x, sigma, cond), None)


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast against a (B, ...) tensor of `ndim` dims."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a (B,) tensor of x's dtype and device."""
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])


def timestep_inputs(x: torch.Tensor, sigma: torch.Tensor,
                    schedule: DiscreteSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """What a timestep-indexed network sees of VE-form x (B, ...) at sigma (B,): the VP input
    x / sqrt(sigma^2 + 1) and t = schedule.sigma_to_t(sigma) (float64 for float64 x, else float32)."""
    t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = schedule.sigma_to_t(sigma).to(device=x.device, dtype=t_dtype)  # (B,)
    return x / (append_dims(sigma.to(x), x.ndim) ** 2 + 1).sqrt(), t


# --- Parameterizations: what a discrete-time network predicts ------------------------------------


@dataclass(frozen=True)
class Prediction:
    """How a network's output maps to x0 (VE form), and the x0-space weight of its plain MSE."""

    name: str
    to_x0: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, out, sigma) -> x0
    mse_weight: Callable[[torch.Tensor], torch.Tensor]  # sigma -> weight on |x0_hat - x0|^2


PREDICTIONS = {
    # eps: x0 = x - sigma eps (DDPM); |eps_hat - eps|^2 = snr |x0_hat - x0|^2.
    "eps": Prediction("eps", lambda x, out, s: x - s * out, lambda s: snr(s)),
    # v = alpha eps - sigma_vp x0 (Salimans & Ho 2022, "Progressive distillation", sec. 4);
    # |v_hat - v|^2 = (snr + 1) |x0_hat - x0|^2.
    "v": Prediction("v", lambda x, out, s: x / (s**2 + 1) - s / (s**2 + 1).sqrt() * out, lambda s: snr(s) + 1),
    # x0 directly: the plain MSE already is the x0 error.
    "x0": Prediction("x0", lambda x, out, s: out, lambda s: torch.ones_like(s)),
}


def prediction(name: str) -> Prediction:
    if name not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {name!r}; choose from {sorted(PREDICTIONS)}")
    return PREDICTIONS[name]


def _call_net(net: Callable, x: torch.Tensor, t: torch.Tensor, cond: Cond | None) -> torch.Tensor:
    return net(x, t, **(cond or {}))


class DiscreteDenoiser:
    """A VP network indexed by timestep (DDPM / LDM / GLIDE / Imagen) as a denoiser.

    The network sees x_vp = x / sqrt(sigma^2 + 1) and t = schedule.sigma_to_t(sigma), as in
    k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser. With `learned_variance` the network's
    output has twice x's channels, the prediction then the variance value v (Improved DDPM; GLIDE, IF, unCLIP).
    """

    def __init__(self, net: Callable, schedule: DiscreteSchedule, prediction_type: str = "eps",
                 learned_variance: bool = False):
        self.net = net
        self.schedule = schedule
        self.prediction = prediction(prediction_type)
        self.learned_variance = learned_variance

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.with_variance(x, sigma, cond)[0]

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor,
                      cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        sigma = batch_sigma(sigma, x)
        out = _call_net(self.net, *timestep_inputs(x, sigma, self.schedule), cond).to(x.dtype)
        v = None
        if self.learned_variance:
            out, v = out.chunk(2, dim=1)  # (B, 2C, ...) -> prediction (B, C, ...), variance value (B, C, ...)
        return self.prediction.to_x0(x, out, append_dims(sigma, x.ndim)), v

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Weight on |x0_hat - x0|^2 that makes the loss the network's plain target MSE."""
        return self.prediction.mse_weight(sigma)

    def sample_training_sigmas(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sigmas of timesteps drawn uniformly from 0..T-1 (DDPM training)."""
        t = torch.randint(0, self.schedule.num_timesteps, (n,), generator=generator)
        return self.schedule.sigmas[t]

    def noise_scale(self, sigma: float) -> float:
        """Std of x at noise level sigma for unit-variance data: VP noise is N(0, 1) in x_vp."""
        return math.sqrt(sigma**2 + 1)


class EDMDenoiser:
    """EDM preconditioning: D = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, eq. 7)."""

    def __init__(self, net: Callable, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 p_mean: float = -1.2, p_std: float = 1.2):
        self.net = net
        self.sigma_data = sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        sigma = batch_sigma(sigma, x)
        s, sd = append_dims(sigma, x.ndim), self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        out = _call_net(self.net, c_in * x, sigma.log() / 4, cond)
        return c_skip * x + c_out * out.to(x.dtype)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (eq. 8)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def sample_training_sigmas(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """ln(sigma) ~ N(P_mean, P_std^2) (EDM table 1)."""
        return (torch.randn(n, generator=generator, dtype=torch.float64) * self.p_std + self.p_mean).exp()

    def noise_scale(self, sigma: float) -> float:
        return sigma


class ConcatInputs:
    """A network that takes extra channels (inpainting mask + masked image, a low-res image for
    super-resolution) concatenated to its input: net(cat([x, cond['concat']]), t, **rest)."""

    def __init__(self, net: Callable, key: str = "concat"):
        self.net, self.key = net, key

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        extra = cond.pop(self.key)
        return self.net(torch.cat([x, extra.to(x.dtype)], dim=1), t, **cond)


# --- Wrappers: a denoiser built on a denoiser ----------------------------------------------------


class DenoiserWrapper:
    """Base of every denoiser -> denoiser wrapper (guidance, thresholding, added conditioning).

    It forwards what it does not define -- schedule facts (sigma_min, sigma_max, schedule,
    noise_scale) and prediction facts (prediction, loss_weight) -- to the wrapped denoiser, so
    wrappers stack in any order and a sampler sees the facts of the network at the bottom. A subclass
    overrides `with_variance` (x0 and the learned-variance value v, `denoise_v`), which `__call__` reads."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser

    def __getattr__(self, name: str):
        if name == "denoiser":  # not set yet (unpickling, a subclass that skipped __init__)
            raise AttributeError(name)
        return getattr(self.denoiser, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.with_variance(x, sigma, cond)[0]

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor,
                      cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return denoise_v(self.denoiser, x, sigma, cond)


class X0Map(DenoiserWrapper):
    """Base of wrappers that only map the wrapped denoiser's x0 (thresholding, Saharia et al. 2022, sec. 2.3);
    `split_x0` gives a call's mapped and raw x0, for samplers that step along the network's own eps."""

    def x0_map(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor,
                      cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0, v = denoise_v(self.denoiser, x, sigma, cond)
        return self.x0_map(x0), v


def split_x0(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor,
             cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, raw x0) of one call: raw is the x0 below the outer `X0Map` wrappers (x0 itself when there are none)."""
    if not isinstance(denoiser, X0Map):
        x0 = denoiser(x, sigma, cond)
        return x0, x0
    x0, raw = split_x0(denoiser.denoiser, x, sigma, cond)
    return denoiser.x0_map(x0), raw


class WithCond(DenoiserWrapper):
    """Conditioning that does not depend on the prompt (the `concat` channels of an inpainting or
    super-resolution stage, a prior's embedding), added to every call's cond; each tensor's batch
    is repeated to x's (classifier-free guidance calls with 2B)."""

    def __init__(self, denoiser: Denoiser, extra: Cond):
        super().__init__(denoiser)
        self.extra = dict(extra)

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor,
                      cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = x.shape[0]
        extra = {k: v.repeat(b // v.shape[0], *(1,) * (v.ndim - 1)) if v.shape[0] != b else v
                 for k, v in self.extra.items()}
        return denoise_v(self.denoiser, x, sigma, {**(cond or {}), **extra})
