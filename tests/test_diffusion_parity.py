"""Every sampler against the diffusers scheduler it corresponds to, step by step, on the same
analytic model, Stable Diffusion's schedule settings, float64: max abs difference <= 1e-5."""

import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from t2i.diffusion import DiscreteDenoiser, DiscreteSchedule  # noqa: E402
from t2i.diffusion.samplers import SAMPLERS  # noqa: E402
from t2i.diffusion.toy import GaussianEpsNet  # noqa: E402

SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1)
SHAPE = (2, 4, 8, 8)
STEPS = 12

# (diffusers scheduler, t2i sampler, extra scheduler config, step kwargs, t2i sampler kwargs)
CASES = {
    "ddpm": (diffusers.DDPMScheduler, "ddpm", dict(clip_sample=False), {}, {}),
    "ddim": (diffusers.DDIMScheduler, "ddim", dict(clip_sample=False, set_alpha_to_one=False), {}, {}),
    "ddim_eta": (diffusers.DDIMScheduler, "ddim", dict(clip_sample=False, set_alpha_to_one=False),
                 dict(eta=0.7), dict(eta=0.7)),
    "euler": (diffusers.EulerDiscreteScheduler, "euler", {}, {}, {}),
    "euler_a": (diffusers.EulerAncestralDiscreteScheduler, "euler_a", {}, {}, {}),
    "heun": (diffusers.HeunDiscreteScheduler, "heun", {}, {}, {}),
    "dpmpp_2m": (diffusers.DPMSolverMultistepScheduler, "dpmpp_2m", {}, {}, {}),
}


def _run_diffusers(scheduler, net, x, generator, step_kwargs, callback):
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs = dict(step_kwargs, generator=generator)
    for t in scheduler.timesteps:
        out = net(scheduler.scale_model_input(x, t), t)
        step = scheduler.step(out, t, x, **step_kwargs)
        x = step.prev_sample
        callback(x)
    return x


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_sampler_matches_diffusers(case, prediction, spacing):
    if case.startswith("ddim") and spacing != "leading":
        pytest.skip("diffusers' DDIM steps to t - T // n whatever the spacing: consistent only when leading")
    cls, sampler, config, step_kwargs, sampler_kwargs = CASES[case]
    scheduler = cls(**SD_CONFIG, **config, timestep_spacing=spacing,
                    prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction])
    scheduler.set_timesteps(STEPS)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod.double())
    net = GaussianEpsNet(schedule, mean=0.3, std=0.6, prediction=prediction)
    vp_scheduler = not hasattr(scheduler, "sigmas") or case == "dpmpp_2m"  # works on x_vp, not x_ve

    # The t2i sigmas: the scheduler's own timesteps (Heun repeats each), then its final noise level.
    timesteps = scheduler.timesteps.double()
    if case == "heun":
        timesteps = torch.cat([timesteps[:1], timesteps[1::2]])
    final = schedule.sigmas[:1] if case.startswith("ddim") else torch.zeros(1, dtype=torch.float64)
    sigmas = torch.cat([schedule.t_to_sigma(timesteps), final])

    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    to_ve = (1 + sigmas[0] ** 2).sqrt() if vp_scheduler else 1.0
    x_T = x_T * scheduler.init_noise_sigma
    theirs_traj, ours_traj = [], []

    def to_vp(x, sigma):
        return x / (1 + sigma**2).sqrt() if vp_scheduler else x

    theirs = _run_diffusers(scheduler, net, x_T.clone(), torch.Generator().manual_seed(1), step_kwargs,
                            theirs_traj.append)
    ours = SAMPLERS[sampler](DiscreteDenoiser(net, schedule, prediction), x_T * to_ve, sigmas,
                             generator=torch.Generator().manual_seed(1),
                             callback=lambda i, x, x0, s: ours_traj.append(to_vp(x, sigmas[i + 1])),
                             **sampler_kwargs)
    if case == "heun":  # diffusers counts each of Heun's evaluations as a step; the last is Euler alone
        theirs_traj = theirs_traj[1::2] + theirs_traj[-1:]
    assert len(theirs_traj) == len(ours_traj) == STEPS
    for i, (a, b) in enumerate(zip(theirs_traj, ours_traj)):
        assert (a.double() - b).abs().max() <= 1e-5, f"step {i} differs"
    assert (theirs.double() - to_vp(ours, sigmas[-1])).abs().max() <= 1e-5
    assert ours.std() < 2  # really denoised, not a trajectory stuck at noise


def test_schedules_match_diffusers():
    for name, theirs_name, betas in [("linear", "linear", (1e-4, 0.02)),
                                     ("scaled_linear", "scaled_linear", (0.00085, 0.012)),
                                     ("cosine", "squaredcos_cap_v2", (1e-4, 0.02))]:
        ours = DiscreteSchedule.named(name).alphas_cumprod
        theirs = diffusers.DDPMScheduler(beta_schedule=theirs_name, beta_start=betas[0],
                                         beta_end=betas[1]).alphas_cumprod.double()
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_timestep_spacings_match_ddim(spacing):
    schedule = DiscreteSchedule.named("scaled_linear")
    for steps in (1, 7, 20, 50, 1000):
        scheduler = diffusers.DDIMScheduler(**SD_CONFIG, timestep_spacing=spacing)
        scheduler.set_timesteps(steps)
        offset = SD_CONFIG["steps_offset"] if spacing == "leading" else 0
        assert schedule.timesteps(steps, spacing, offset).long().tolist() == scheduler.timesteps.tolist()


def test_linspace_and_karras_sigmas_match_euler():
    schedule = DiscreteSchedule.named("scaled_linear")
    from t2i.diffusion import karras_sigmas

    scheduler = diffusers.EulerDiscreteScheduler(**SD_CONFIG, timestep_spacing="linspace")
    scheduler.set_timesteps(30)
    torch.testing.assert_close(schedule.sampling_sigmas(30, "linspace"), scheduler.sigmas.double(),
                               rtol=1e-5, atol=1e-6)
    scheduler = diffusers.EulerDiscreteScheduler(**SD_CONFIG, use_karras_sigmas=True)
    scheduler.set_timesteps(30)
    torch.testing.assert_close(karras_sigmas(30, schedule.sigma_min, schedule.sigma_max),
                               scheduler.sigmas.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_clip_sample_matches_diffusers(eta):
    """DDIMScheduler(clip_sample=True) clips x0 but keeps the network's eps in the direction term: t2i's DDIM
    over a clipping denoiser with model_eps (what sampling_from_scheduler sets) equals it; without, it does not."""
    from t2i.diffusion.guidance import StaticThreshold

    scheduler = diffusers.DDIMScheduler(**SD_CONFIG, clip_sample=True, clip_sample_range=0.5, set_alpha_to_one=False)
    scheduler.set_timesteps(STEPS)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod.double())
    net = GaussianEpsNet(schedule, mean=0.3, std=0.6)
    sigmas = torch.cat([schedule.t_to_sigma(scheduler.timesteps.double()), schedule.sigmas[:1]])
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = _run_diffusers(scheduler, net, x_T.clone(), torch.Generator().manual_seed(1), dict(eta=eta),
                            lambda x: None)
    den = StaticThreshold(DiscreteDenoiser(net, schedule, "eps"), 0.5)
    errs = [(SAMPLERS["ddim"](den, x_T * (1 + sigmas[0] ** 2).sqrt(), sigmas, eta=eta, model_eps=model_eps,
                              generator=torch.Generator().manual_seed(1)) / (1 + sigmas[-1] ** 2).sqrt()
             - theirs.double()).abs().max() for model_eps in (True, False)]
    assert errs[0] <= 1e-5 < 1e-3 < errs[1]
