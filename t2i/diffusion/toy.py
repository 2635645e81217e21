"""Toy problems with known answers: the exact denoisers of Gaussian and two-point data.

For data x0 ~ N(mu, s^2) (per dimension) observed as x = x0 + sigma eps, the optimal denoiser
is E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu); for a mixture of points it is the
posterior-weighted mean of the points. A sampler that is right reproduces the data exactly
as its step count grows: the core's tests and `make demo` use these.
"""

from __future__ import annotations

import time

import torch

from t2i.diffusion.denoisers import Cond, append_dims


class GaussianDenoiser:
    """Exact D(x, sigma) for x0 ~ N(mean, std^2), independently per element."""

    def __init__(self, mean: float | torch.Tensor, std: float | torch.Tensor):
        self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        s = append_dims(sigma.to(x.dtype), x.ndim)
        mean, var = self.mean.to(x), self.std.to(x) ** 2
        return mean + var / (var + s**2) * (x - mean)


class PointMixtureDenoiser:
    """Exact D(x, sigma) for x0 uniform over a few points (K, D), x of shape (B, D)."""

    def __init__(self, points: torch.Tensor):
        self.points = points

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        pts = self.points.to(x)
        d2 = (x[:, None, :] - pts[None]).pow(2).sum(-1)  # (B, K)
        w = torch.softmax(-d2 / (2 * sigma.to(x)[:, None] ** 2), dim=1)
        return w @ pts


class GaussianEpsNet:
    """A VP network predicting eps (or v) exactly for Gaussian data, indexed by timestep t,
    for parity tests against diffusers' schedulers: net(x_vp, t) -> eps or v."""

    def __init__(self, schedule, mean: float, std: float, prediction: str = "eps"):
        self.schedule, self.mean, self.std, self.prediction = schedule, mean, std, prediction

    def __call__(self, x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1).expand(x_vp.shape[0])
        sigma = self.schedule.t_to_sigma(t).to(x_vp)
        a = append_dims(1 / (1 + sigma**2), x_vp.ndim)
        x0 = GaussianDenoiser(self.mean, self.std)(x_vp / a.sqrt(), sigma)
        eps = (x_vp - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0


def run_toy_demo(n: int = 4000, steps: int = 50, seed: int = 0) -> None:
    """Sample N(mean=0.5, std=0.3) data with each sampler over its exact denoiser, then train a
    small MLP with the diffusion loss on two points and sample it; print what happened."""
    from t2i.diffusion.denoisers import DiscreteDenoiser
    from t2i.diffusion.losses import diffusion_loss, training_draw
    from t2i.diffusion.sampling import sample
    from t2i.diffusion.samplers import SAMPLERS
    from t2i.diffusion.schedules import DiscreteSchedule

    print(f"t2i diffusion core on a toy problem: data ~ N(0.5, 0.3^2), {n} samples, {steps} steps")
    print(f"{'sampler':>10} | {'mean':>7} | {'std':>7} | seconds")
    schedule = DiscreteSchedule.named("scaled_linear")
    exact = DiscreteDenoiser(GaussianEpsNet(schedule, 0.5, 0.3), schedule, "eps")
    for name in SAMPLERS:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        x = sample(exact, (n, 2), steps=steps, sampler=name, spacing="linspace", generator=g, dtype=torch.float64)
        print(f"{name:>10} | {x.mean():7.4f} | {x.std():7.4f} | {time.perf_counter() - t0:.2f}")

    print("training a 2-layer MLP (v-prediction, min-SNR-5) on the points (-1, -1) and (1, 1) ...")
    torch.manual_seed(seed)
    points = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                              torch.nn.SiLU(), torch.nn.Linear(128, 2))
    net = lambda x, t: mlp(torch.cat([x, (t / 1000.0)[:, None].to(x)], dim=1))  # noqa: E731
    learned = DiscreteDenoiser(net, schedule, "v")
    opt = torch.optim.AdamW(mlp.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(1500):
        x0 = points[torch.randint(0, 2, (256,), generator=g)]
        sigma, noise = training_draw(learned, x0, g)
        loss = diffusion_loss(learned, x0, weighting="min_snr", sigma=sigma, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = sample(learned, (1000, 2), steps=25, sampler="dpmpp_2m", spacing="linspace", generator=g)
    near = (torch.cdist(x, points).min(dim=1).values < 0.25).float().mean()
    share = (x.sum(1) > 0).float().mean()
    print(f"final loss {loss.item():.4f}; {near:.1%} of 1000 samples within 0.25 of a data point, "
          f"{share:.1%} on the (1, 1) side")
