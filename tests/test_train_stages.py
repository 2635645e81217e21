"""The same loop trains the autoencoder stage, then a latent diffusion stage on top of its frozen EMA weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from t2i import load as t2i_load
from t2i.train import RecipeError, Trainer, load_recipe, read_checkpoint

SMALL = ["train.steps=3", "train.batch_size=2", "train.checkpoint_every=3", "train.log_every=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_autoencoder_then_latent_diffusion(tmp_path):
    ae_run = tmp_path / "ae"
    ae = Trainer(load_recipe("tiny_autoencoder", SMALL + ["autoencoder.num_samples=2"]), ae_run,
                 progress=False, log=lambda m: None).run()
    c = read_checkpoint(ae.checkpoint)
    assert c.config["stage"] == "autoencoder" and any(k.startswith("autoencoder.encoder.") for k in c.ema)
    assert Image.open(ae_run / "samples" / "step_00000003.png").size == (32, 32)  # inputs over reconstructions

    recipe = load_recipe("tiny_latent", SMALL + [f"diffusion.first_stage='{ae_run}'", "diffusion.num_samples=2",
                                                 "diffusion.sample_steps=2"])
    trainer = Trainer(recipe, tmp_path / "ldm", progress=False, log=lambda m: None)
    result = trainer.run()
    assert trainer.stage.sample_shape == (4, 8, 8)  # 16 px -> 8x8x4 latents
    assert not any(p.requires_grad for p in trainer.stage.first_stage.parameters())
    saved = read_checkpoint(result.checkpoint).model
    assert not any(k.startswith("autoencoder") or "first_stage" in k for k in saved)  # the frozen stage is not saved
    assert {k.split(".")[0] for k in saved} == {"net", "text"}
    assert Image.open(tmp_path / "ldm" / "samples" / "step_00000003.png").size == (32, 16)  # 2 decoded 16 px images

    # a diffusion checkpoint is not an autoencoder
    with pytest.raises(RecipeError, match="is a 'diffusion' checkpoint, not an autoencoder"):
        Trainer(load_recipe("tiny_latent", SMALL + [f"diffusion.first_stage='{tmp_path / 'ldm'}'"]),
                tmp_path / "bad", progress=False, log=lambda m: None).run()


def test_a_network_that_does_not_fit_the_data_is_named(tmp_path):
    recipe = load_recipe("tiny_pixel", ["diffusion.net.in_channels=4"])
    with pytest.raises(RecipeError, match=r"\[diffusion.net\] in_channels = 4: must be 3 \(3 image channels\)"):
        Trainer(recipe, tmp_path, progress=False, log=lambda m: None).run()
    recipe = load_recipe("tiny_pixel", ["diffusion.net.context_dim=16"])  # the text encoder is wider
    with pytest.raises(RecipeError, match=r"\[diffusion.net\] does not fit the data \(images of shape \(3, 16, 16\)"):
        Trainer(recipe, tmp_path / "ctx", progress=False, log=lambda m: None).run()


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_autocast_trains_on_cpu(tmp_path, bf16):
    recipe = load_recipe("tiny_pixel", SMALL + [f"train.bf16={str(bf16).lower()}", "train.device='cpu'",
                                                "diffusion.num_samples=2", "diffusion.sample_steps=2"])
    trainer = Trainer(recipe, tmp_path, progress=False, log=lambda m: None)
    seen: dict[str, list[torch.dtype]] = {}
    setup = trainer.setup

    def setup_and_hook():  # the model exists only after setup: hook a conv and a linear layer inside it
        setup()
        convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
        linears = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
        for name, module in (("conv", convs[len(convs) // 2]), ("linear", linears[len(linears) // 2])):
            def record(mod, inputs, output, name=name):
                if mod.training and torch.is_grad_enabled():  # training forward passes only, not sampling
                    seen.setdefault(name, []).append(output.dtype)
            module.register_forward_hook(record)

    trainer.setup = setup_and_hook
    result = trainer.run()
    expected = torch.bfloat16 if bf16 else torch.float32
    assert set(seen) == {"conv", "linear"} and len(seen["conv"]) >= 3  # one or more calls per step
    assert set(seen["conv"]) == set(seen["linear"]) == {expected}
    weights = read_checkpoint(result.checkpoint).model
    assert all(v.dtype == torch.float32 for v in weights.values())  # weights stay float32 under autocast
    assert math.isfinite(result.loss)


def test_latent_scale_replaces_the_first_stage_scaling_factor(tmp_path):
    """A diffusion recipe's latent_scale (1 / latent std, measured after the autoencoder is trained)
    replaces the first stage's scaling_factor; 0 keeps it; negative values are refused."""
    from t2i.train.stages.diffusion import load_first_stage

    result = Trainer(load_recipe("tiny_autoencoder", SMALL), tmp_path / "ae", progress=False, log=lambda m: None).run()
    assert load_first_stage(tmp_path / "ae", "cpu", latent_scale=0.25).config.scaling_factor == 0.25
    default = read_checkpoint(result.checkpoint).config["autoencoder"]["net"].get("scaling_factor", 0.18215)
    assert load_first_stage(tmp_path / "ae", "cpu").config.scaling_factor == default
    with pytest.raises(RecipeError, match="latent_scale"):
        load_recipe("tiny_latent", ["diffusion.latent_scale=-1"])


def test_a_run_continues_from_a_system_folder(tmp_path):
    """init_from + first_stage = a t2i system folder: the run starts from its UNet, text encoder, tokenizer and
    autoencoder (fine-tuning shipped weights), and exports back to the same kind of folder."""
    from t2i.api import system_from_training_run
    from t2i.io.weights import load_safetensors

    SMALL_AE = SMALL + ["autoencoder.num_samples=2"]
    Trainer(load_recipe("tiny_autoencoder", SMALL_AE), tmp_path / "ae", progress=False, log=lambda m: None).run()
    Trainer(load_recipe("tiny_latent", SMALL + [f"diffusion.first_stage='{tmp_path / 'ae'}'"]), tmp_path / "ldm",
            progress=False, log=lambda m: None).run()
    folder = system_from_training_run(tmp_path / "ldm").save(tmp_path / "system")

    recipe = load_recipe("tiny_latent", ["train.steps=1", "train.batch_size=2", f"diffusion.init_from='{folder}'",
                                         f"diffusion.first_stage='{folder}'"])
    trainer = Trainer(recipe, tmp_path / "tuned", progress=False, log=lambda m: None)
    trainer.setup()
    unet = load_safetensors(folder / "unet.safetensors")
    assert all(torch.equal(v, unet[k]) for k, v in trainer.stage.model["net"].state_dict().items())
    text = load_safetensors(folder / "text_encoder.safetensors")
    assert all(torch.equal(v, text[k]) for k, v in trainer.stage.model["text"].transformer.state_dict().items())
    assert trainer.stage.model["text"].tokenizer.to_json() == (folder / "tokenizer.json").read_text()
    ae = load_safetensors(folder / "autoencoder.safetensors")
    assert all(torch.equal(v, ae[k]) for k, v in trainer.stage.first_stage.state_dict().items())
    with pytest.raises(RecipeError, match="init_from = 'nowhere'"):
        Trainer(load_recipe("tiny_latent", [f"diffusion.first_stage='{folder}'", "diffusion.init_from='nowhere'"]),
                tmp_path / "bad", progress=False, log=lambda m: None).setup()


def test_a_pixel_base_continues_from_a_saved_cascade(tmp_path):
    """init_from = a GLIDE folder (its first stage, base/) or base/ itself: the base run starts from the saved
    UNet, text encoder and tokenizer, so training goes on from shipped weights when the run folder is gone."""
    from t2i.api import system_from_training_runs
    from t2i.io.weights import load_safetensors

    Trainer(load_recipe("tiny_glide", SMALL), tmp_path / "base", progress=False, log=lambda m: None).run()
    folder = system_from_training_runs(tmp_path / "base").save(tmp_path / "glide", dtype=torch.float16)
    unet = load_safetensors(folder / "base" / "unet.safetensors")
    for init in (folder, folder / "base"):
        trainer = Trainer(load_recipe("tiny_glide", SMALL + [f"diffusion.init_from='{init}'"]), tmp_path / "more",
                          progress=False, log=lambda m: None)
        trainer.setup()
        assert all(torch.equal(v, unet[k].float()) for k, v in trainer.stage.model["net"].state_dict().items())
        assert trainer.stage.model["text"].tokenizer.to_json() == (folder / "base" / "tokenizer.json").read_text()


def test_convert_step_exports_a_diffusion_runs_checkpoint_of_that_step(tmp_path):
    """`t2i convert RUN DST --step N` writes the system of the run's step-N checkpoint (a learning curve reads
    every checkpoint), not only for controlnet runs; --step on a folder that is not a run is a one-line error."""
    from t2i.api import convert, system_from_training_run
    from t2i.cli import main

    Trainer(load_recipe("tiny_autoencoder", SMALL + ["autoencoder.num_samples=2"]), tmp_path / "ae",
            progress=False, log=lambda m: None).run()
    Trainer(load_recipe("tiny_latent", SMALL + [f"diffusion.first_stage='{tmp_path / 'ae'}'", "train.checkpoint_every=1",
                                     "train.keep_checkpoints=5"]),
            tmp_path / "ldm", progress=False, log=lambda m: None).run()
    assert main(["convert", str(tmp_path / "ldm"), str(tmp_path / "s1"), "--to", "t2i", "--step", "1"]) == 0
    step1 = t2i_load(tmp_path / "s1").unet.state_dict()
    by_folder = system_from_training_run(tmp_path / "ldm" / "checkpoints" / "step_00000001").unet.state_dict()
    newest = system_from_training_run(tmp_path / "ldm").unet.state_dict()
    assert all(torch.equal(v, by_folder[k]) for k, v in step1.items())
    assert not all(torch.equal(v, newest[k]) for k, v in step1.items())
    with pytest.raises(ValueError, match=r"no checkpoint of step 9 \(its checkpoints: steps 1, 2, 3\)"):
        convert(tmp_path / "ldm", tmp_path / "s9", "t2i", step=9)
    with pytest.raises(ValueError, match=r"--step 1 picks a checkpoint of a `t2i train` run; .*s1 is not one"):
        convert(tmp_path / "s1", tmp_path / "again", "t2i", step=1)


def test_an_inpainting_unet_starts_from_a_text_to_image_system(tmp_path):
    """Stable Diffusion's inpainting recipe over latents: the UNet takes the mask (resized to the latents) and
    the erased image's latents as 5 more input channels, zero-initialised, so it starts as the system's UNet;
    the text encoder stays frozen (the inpainting UNet shares it), and the run exports as an inpainting LDM."""
    from t2i.api import system_from_training_run
    from t2i.train.rng import SampleRNG

    Trainer(load_recipe("tiny_autoencoder", SMALL + ["autoencoder.num_samples=2"]), tmp_path / "ae",
            progress=False, log=lambda m: None).run()
    Trainer(load_recipe("tiny_latent", SMALL + [f"diffusion.first_stage='{tmp_path / 'ae'}'"]), tmp_path / "ldm",
            progress=False, log=lambda m: None).run()
    base = system_from_training_run(tmp_path / "ldm")
    folder = base.save(tmp_path / "system")
    recipe = load_recipe("tiny_latent", SMALL + [f"diffusion.init_from='{folder}'", f"diffusion.first_stage='{folder}'",
                                                 "diffusion.inpaint=true", "diffusion.freeze_text=true",
                                                 "diffusion.net.in_channels=9", "diffusion.num_samples=2"])
    trainer = Trainer(recipe, tmp_path / "inpaint", progress=False, log=lambda m: None)
    trainer.setup()
    stage = trainer.stage
    w = stage.model["net"].conv_in.weight
    assert torch.equal(w[:, :4], base.unet.conv_in.weight) and not w[:, 4:].any()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    cond = stage.encode_text(["a red circle", ""])
    with torch.no_grad():  # any mask and erased image: the same output as the text-to-image UNet at the start
        same = stage.model["net"](torch.cat([x, torch.randn(2, 5, 8, 8)], 1), t, **cond)
        torch.testing.assert_close(same, base.unet(x, t, **cond), rtol=0, atol=1e-6)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    _, extra = stage.image_conditioning(stage.encode_images(pixels, None), SampleRNG([1, 2]), pixels=pixels)
    mask = extra[:, :1]
    assert extra.shape == (2, 5, 8, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
    erased = torch.stack([random_mask_at(1, 16), random_mask_at(2, 16)])  # the masks drawn at pixel size
    torch.testing.assert_close(mask, torch.nn.functional.interpolate(erased, size=(8, 8)))
    torch.testing.assert_close(extra[:, 1:], stage.encode_images(pixels * (1 - erased), None))

    text = {k: v.clone() for k, v in stage.model["text"].state_dict().items()}
    trainer.run()
    assert all(torch.equal(v, text[k]) for k, v in trainer.stage.model["text"].state_dict().items())
    system = system_from_training_run(tmp_path / "inpaint")
    assert system.config.inpainting and system.capabilities == frozenset({"inpaint"})

    # shipped beside the text-to-image UNet: a mask picks the twin, whose output there equals the twin's own system
    from t2i.api import add_inpainting, with_inpainting

    from t2i.systems import LDM

    both = LDM.load(add_inpainting(folder, tmp_path / "inpaint", tmp_path / "both"))
    assert both.config.inpaint_unet and both.capabilities == frozenset({"txt2img", "img2img", "inpaint"})
    image, mask = Image.new("RGB", (16, 16), (200, 30, 30)), Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    pixels = lambda images: [np.asarray(i) for i in images]  # noqa: E731
    kw = dict(image=image, mask=mask, seed=3, steps=2)
    assert np.array_equal(pixels(both.generate("a blue square", **kw)), pixels(system.generate("a blue square", **kw)))
    assert np.array_equal(pixels(both.generate("a blue square", seed=3, steps=2)),
                          pixels(base.generate("a blue square", seed=3, steps=2)))
    with pytest.raises(ValueError, match="not an inpainting twin"):
        with_inpainting(base, base)


def random_mask_at(seed: int, size: int) -> torch.Tensor:
    from t2i.train.rng import SampleRNG
    from t2i.train.stages.diffusion import random_mask

    return random_mask(SampleRNG([seed]).generators[0], size)
