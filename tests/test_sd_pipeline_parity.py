"""A tiny random Stable Diffusion pipeline built offline with diffusers gives the same image in t2i
as in diffusers, for the same prompt, seed, scheduler and steps (max abs pixel difference <= 1e-3
on the [0, 1] scale): txt2img under every scheduler t2i maps, img2img, inpainting with a
9-channel UNet and mask blending with a 4-channel one, and `t2i convert` both ways."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from t2i.io.diffusers_pipeline import (  # noqa: E402
    load_diffusers_pipeline,
    sampling_from_scheduler,
    save_diffusers_pipeline,
)
from conftest import SD_SCHEDULER, tiny_sd_components  # noqa: E402
from t2i.systems import LDM  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

TOL = 1e-3
SIZE = 16  # pixels; the VAE halves it, the UNet halves it again
STEPS = 6
PROMPT, NEGATIVE = "a red circle to the left of a blue square", "a green star"
SCHEDULERS = {  # name -> (diffusers class, config changes)
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_linspace": ("EulerDiscreteScheduler", dict(timestep_spacing="linspace")),
    "euler_a_trailing": ("EulerAncestralDiscreteScheduler", dict(timestep_spacing="trailing")),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_linspace": ("DPMSolverMultistepScheduler", dict(timestep_spacing="linspace")),
    "euler_v": ("EulerDiscreteScheduler", dict(prediction_type="v_prediction")),
}


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd")
    pipe = diffusers.StableDiffusionPipeline(**tiny_sd_components(tmp, SIZE))
    pipe.save_pretrained(tmp / "pipe", safe_serialization=True)
    return tmp / "pipe", pipe


@pytest.fixture(scope="module")
def sd_inpaint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdi")
    pipe = diffusers.StableDiffusionInpaintPipeline(**tiny_sd_components(tmp, SIZE, in_channels=9))
    pipe.save_pretrained(tmp / "pipe", safe_serialization=True)
    return tmp / "pipe", pipe


def _with_scheduler(pipe, ours, name):
    cls_name, changes = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    pipe.scheduler = cls.from_config({**SD_SCHEDULER, **changes})
    schedule, prediction, sampling = sampling_from_scheduler({**dict(pipe.scheduler.config), "_class_name": cls_name})
    ours.config = dataclasses.replace(ours.config, schedule=schedule, prediction=prediction, sampling=sampling)
    return pipe


def _init_image():
    g = np.random.default_rng(0)
    a = (g.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    a[4:12, 2:9] = (220, 40, 40)
    return Image.fromarray(a)


def _mask():
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[:, SIZE // 2:] = 255  # repaint the right half
    return Image.fromarray(a)


def _theirs(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(7), **kw).images
    return out


def _ours(system, **kw):
    x = system.sample(PROMPT, negative_prompt=NEGATIVE, steps=STEPS, guidance=5.0, seed=7, **kw)
    return x.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3) like diffusers' "np" output


def _check(theirs, ours):
    assert theirs.shape == ours.shape
    diff = float(np.abs(theirs - ours).max())
    print(f"max abs pixel difference {diff:.2e}")  # shown with -s: the numbers the README reports
    assert diff <= TOL
    inside = (theirs > 0.02) & (theirs < 0.98)
    assert inside.mean() > 0.3 and theirs.std() > 0.05  # a real image, not one clamped flat


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_txt2img_matches_diffusers(sd, scheduler):
    folder, pipe = sd
    ours = load_diffusers_pipeline(folder)
    pipe = _with_scheduler(pipe, ours, scheduler)
    _check(_theirs(pipe, height=SIZE, width=SIZE, num_images_per_prompt=2),
           _ours(ours, width=SIZE, height=SIZE, num_images=2))


def test_text_and_seed_matter(sd):
    """The comparison above is sensitive: another prompt or seed moves pixels far beyond the tolerance."""
    folder, _ = sd
    ours = load_diffusers_pipeline(folder)
    base = ours.sample(PROMPT, steps=STEPS, guidance=5.0, seed=7, width=SIZE, height=SIZE)
    other_prompt = ours.sample("two green triangles", steps=STEPS, guidance=5.0, seed=7, width=SIZE, height=SIZE)
    other_seed = ours.sample(PROMPT, steps=STEPS, guidance=5.0, seed=8, width=SIZE, height=SIZE)
    assert (base - other_prompt).abs().max() > 50 * TOL
    assert (base - other_seed).abs().max() > 50 * TOL
    assert torch.equal(base, ours.sample(PROMPT, steps=STEPS, guidance=5.0, seed=7, width=SIZE, height=SIZE))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m"])
def test_img2img_matches_diffusers(sd, scheduler):
    folder, pipe = sd
    ours = load_diffusers_pipeline(folder)
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    pipe = _with_scheduler(pipe, ours, scheduler)
    _check(_theirs(pipe, image=_init_image(), strength=0.6), _ours(ours, image=_init_image(), strength=0.6))


@pytest.mark.parametrize("scheduler,strength", [("ddim", 1.0), ("euler", 0.7)])
def test_inpaint_9_channel_matches_diffusers(sd_inpaint, scheduler, strength):
    folder, pipe = sd_inpaint
    ours = load_diffusers_pipeline(folder)
    assert ours.config.inpainting
    pipe = _with_scheduler(pipe, ours, scheduler)
    kw = dict(image=_init_image(), mask=_mask(), strength=strength)
    _check(_theirs(pipe, image=kw["image"], mask_image=kw["mask"], strength=strength, height=SIZE, width=SIZE),
           _ours(ours, **kw))


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler"])
def test_inpaint_mask_blending_matches_diffusers(sd, scheduler):
    """Any (4-channel) model inpaints by blending the kept region back after every step."""
    folder, pipe = sd
    ours = load_diffusers_pipeline(folder)
    pipe = diffusers.StableDiffusionInpaintPipeline(**pipe.components)
    pipe = _with_scheduler(pipe, ours, scheduler)
    theirs = _theirs(pipe, image=_init_image(), mask_image=_mask(), height=SIZE, width=SIZE)
    mine = _ours(ours, image=_init_image(), mask=_mask())
    _check(theirs, mine)


def test_convert_round_trip(sd, tmp_path):
    """diffusers folder -> t2i -> t2i folder -> t2i -> diffusers folder: identical weights, and diffusers
    gives the same image from the exported folder."""
    folder, pipe = sd
    first = load_diffusers_pipeline(folder)
    first.save(tmp_path / "t2i")
    second = LDM.load(tmp_path / "t2i")
    save_diffusers_pipeline(second, tmp_path / "back")
    third = load_diffusers_pipeline(tmp_path / "back")
    for a, b in [(first, second), (first, third)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert a.config == b.config

    exported = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "back")
    _check(_theirs(exported, height=SIZE, width=SIZE), _ours(second, width=SIZE, height=SIZE))
    _check(_theirs(pipe.__class__(**{**pipe.components, "scheduler": exported.scheduler}), height=SIZE, width=SIZE),
           _ours(third, width=SIZE, height=SIZE))


def test_single_file_checkpoint_matches_diffusers(sd, tmp_path):
    """An original-layout single file (written by t2i's sd_single_file map) plus the folder's tokenizer and
    scheduler gives diffusers' image; without a tokenizer folder the error says what is missing."""
    from t2i.io.sd_checkpoint import load_sd_checkpoint
    from t2i.io.sd_single_file import StableDiffusionWeights, save_sd_single_file

    folder, pipe = sd
    system = load_diffusers_pipeline(folder)
    path = save_sd_single_file(StableDiffusionWeights(unet=system.unet, vae=system.autoencoder,
                                                      text_encoder=system.text_encoder.transformer),
                               tmp_path / "model.safetensors")
    ours = load_sd_checkpoint(path, config_dir=folder)
    pipe = _with_scheduler(pipe, ours, "euler")
    _check(_theirs(pipe, height=SIZE, width=SIZE), _ours(ours, width=SIZE, height=SIZE))
    with pytest.raises(ValueError, match="carries no tokenizer"):
        load_sd_checkpoint(path)
