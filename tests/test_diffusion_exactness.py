"""Samplers over exact denoisers reproduce the data: the diffusion math is right, not just
consistent with another implementation."""

import pytest
import torch

from t2i.diffusion import DiscreteDenoiser, DiscreteSchedule, karras_sigmas, sample
from t2i.diffusion.samplers import SAMPLERS, ddim, randn
from t2i.diffusion.toy import GaussianDenoiser, GaussianEpsNet, PointMixtureDenoiser

MEAN, STD = 0.5, 0.3
SIGMA_MAX = 80.0
DETERMINISTIC = ["ddim", "euler", "heun", "dpmpp_2m"]
STOCHASTIC = ["ddpm", "euler_a"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_map_gaussian_exactly(name):
    # The probability-flow ODE maps x at sigma_max to mean + (x - mean) * std / sqrt(std^2 + sigma_max^2):
    # one probe per sample gives the sampler's map with no Monte-Carlo error.
    # First-order solvers get within 0.5% of the exact std at 1000 steps, second-order ones within 0.05% at 200.
    steps, tol = {"ddim": (1000, 5e-3), "euler": (1000, 5e-3), "heun": (200, 5e-4), "dpmpp_2m": (200, 5e-4)}[name]
    sigmas = karras_sigmas(steps, 0.002, SIGMA_MAX)
    z = torch.linspace(-3, 3, 7, dtype=torch.float64)
    x = MEAN + z * (STD**2 + SIGMA_MAX**2) ** 0.5
    out = SAMPLERS[name](GaussianDenoiser(MEAN, STD), x, sigmas)
    assert abs(out[3].item() - MEAN) < 1e-9  # the mean is a fixed point
    slope = (out - MEAN)[z != 0] / z[z != 0]
    assert ((slope - STD).abs() / STD).max() < tol


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reproduce_gaussian_moments(name):
    g = torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(1000, 0.002, SIGMA_MAX)
    x = MEAN + torch.randn(50_000, generator=g, dtype=torch.float64) * (STD**2 + SIGMA_MAX**2) ** 0.5
    out = SAMPLERS[name](GaussianDenoiser(MEAN, STD), x, sigmas, generator=g)
    # Monte-Carlo standard errors at 50k samples: 0.0013 on the mean, 0.3% on the std.
    assert abs(out.mean().item() - MEAN) < 0.005
    assert abs(out.std().item() - STD) / STD < 0.02


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_converge_with_steps(name):
    """Error against the exact data std shrinks as steps grow (a wrong sampler plateaus)."""
    schedule = DiscreteSchedule.named("scaled_linear")
    den = DiscreteDenoiser(GaussianEpsNet(schedule, MEAN, STD), schedule, "eps")
    errors = []
    for steps in (10, 100):
        g = torch.Generator().manual_seed(0)
        x = sample(den, (50_000,), steps=steps, sampler=name, spacing="karras", generator=g, dtype=torch.float64)
        errors.append(abs(x.std().item() - STD))
    assert errors[1] < errors[0] / 2 and errors[1] < 0.015


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_two_point_mixture(name):
    points = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 2, generator=g, dtype=torch.float64) * SIGMA_MAX
    out = SAMPLERS[name](PointMixtureDenoiser(points), x, karras_sigmas(100, 0.002, SIGMA_MAX), generator=g)
    dist = torch.cdist(out, points).min(dim=1).values
    assert dist.max() < 1e-3  # every sample lands on a data point
    assert abs((out[:, 0] > 0).double().mean().item() - 0.5) < 0.02  # with the right weights


def test_ddim_eta0_inverts():
    den = GaussianDenoiser(MEAN, STD)
    x = MEAN + STD * torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (100, 1000):
        sigmas = karras_sigmas(steps, 0.002, SIGMA_MAX)[:-1]  # to sigma_min, not to 0
        latent = ddim(den, x, sigmas.flip(0))  # encode: integrate the ODE upwards
        assert abs(latent.std().item() - SIGMA_MAX) / SIGMA_MAX < 0.1
        errors.append((ddim(den, latent, sigmas) - x).abs().max().item())
    assert errors[1] < 0.01 and errors[1] < errors[0] / 5  # first order: 10x steps, ~10x smaller


def test_schedule_roundtrips():
    sched = DiscreteSchedule.named("cosine")
    t = torch.tensor([0.0, 0.25, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(sched.sigma_to_t(sched.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    from t2i.diffusion.schedules import alphas_cumprod_from_sigmas, respace, space_timesteps

    torch.testing.assert_close(alphas_cumprod_from_sigmas(sched.sigmas), sched.alphas_cumprod)
    use = space_timesteps(1000, "ddim50")
    assert len(use) == 50 and use[0] == 0 and use[1] == 20
    assert len(space_timesteps(1000, "10,15,20")) == 45
    respaced = torch.cumprod(1 - respace(sched.alphas_cumprod, use), 0)
    torch.testing.assert_close(respaced, sched.alphas_cumprod[use])


def test_bad_inputs_fail_clearly():
    sched = DiscreteSchedule.named("linear")
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(DiscreteDenoiser(None, sched), (1, 2), sampler="nope")
    with pytest.raises(ValueError, match="steps"):
        sample(DiscreteDenoiser(None, sched), (1, 2), steps=0)
    with pytest.raises(ValueError, match="unknown prediction"):
        DiscreteDenoiser(None, sched, "score")
    with pytest.raises(ValueError, match="strictly decrease"):
        DiscreteSchedule(torch.tensor([0.5, 0.9]))


def test_a_list_of_generators_gives_each_row_its_own_stream():
    """randn with one generator per row (per-image noise, diffusers' list of generators): row i is what
    generator i alone gives a batch of one, at every draw, so a sampler's row does not depend on its batch."""
    like, seeds = torch.empty(()), (5, 6)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    draws = [randn((2, 3, 5), like, gens) for _ in range(2)]
    alone = torch.Generator().manual_seed(6)
    assert all(torch.equal(d[1:], randn((1, 3, 5), like, alone)) for d in draws)
    with pytest.raises(ValueError, match="one per row"):
        randn((3, 2), like, gens)
