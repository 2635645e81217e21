"""Diagonal Gaussian posterior of the KL autoencoder (Rombach et al. 2022, LDM, sec. 3)."""

from __future__ import annotations

import math

import torch

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # the clamp LDM and diffusers apply


class DiagonalGaussian:
    """N(mean, exp(logvar)) per element; logvar clamped to [-30, 20] as in LDM."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """Split (B, 2C, ...) encoder moments into mean and logvar along dim 1."""
        mean, logvar = moments.chunk(2, dim=1)  # (B, C, ...) each
        return cls(mean, logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw mean + std * eps; eps comes from `generator`'s device (CPU noise as diffusers)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other) summed over all but the batch dim, (B,); other defaults to N(0, I)."""
        dims = tuple(range(1, self.mean.ndim))
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of `x`, summed over all but the batch dim, (B,)."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + self.logvar + (x - self.mean).pow(2) / self.var, dim=dims)
