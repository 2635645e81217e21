"""GLIDE as a composition: tiny systems with random weights generate, round-trip through the t2i folder,
cascade to 4x size, inpaint keeping the unmasked region, and take gradient guidance; the training
stage's super-resolution / crop / inpainting options train through the real Trainer."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import t2i
from t2i.encoders import WordTokenizer
from t2i.nn.unet import UNetConfig
from t2i.systems import GLIDE, GLIDEConfig, GLIDEStageConfig, SamplingConfig, ScheduleConfig, TextConfig
from t2i.systems.request import SEED_STRIDE
from t2i.train import RecipeError, Trainer, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BASE = 8  # base image side; the upsampler makes 32 px


def stage_config(in_channels: int = 3, size: int = BASE, lowres: int = 0, inpaint: bool = False,
                 guidance: float = 3.0) -> GLIDEStageConfig:
    return GLIDEStageConfig(
        unet=UNetConfig(in_channels=in_channels, out_channels=3, block_channels=(16, 32), num_res_blocks=1,
                        attention_levels=(1,), attention_block="adm", num_heads=2, context_dim=16, pooled_dim=16,
                        scale_shift=True, norm_groups=8),
        text=TextConfig(kind="word", encoder=dict(width=16, layers=1, heads=2, max_length=12), pooled=True),
        schedule=ScheduleConfig(name="cosine"), prediction="eps",
        sampling=SamplingConfig(sampler="ddim", steps=3, guidance=guidance, spacing="linspace", offset=0),
        sample_size=size, lowres_size=lowres, lowres_noise=0.1 if lowres else 0.0, inpaint=inpaint)


def tiny_glide(upsampler: bool = False, inpaint: bool = False, seed: int = 0, size: int = BASE) -> GLIDE:
    torch.manual_seed(seed)
    up = stage_config(6, 4 * size, size, guidance=1.0) if upsampler else None
    config = GLIDEConfig(stage_config(7 if inpaint else 3, size, inpaint=inpaint), up)
    system = GLIDE.build(config, WordTokenizer.for_shapes(), name="tiny-glide")
    with torch.no_grad():  # fresh weights zero some layers: noise everywhere so every path matters
        for p in system.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return system.eval()


@pytest.fixture(scope="module")
def system():
    return tiny_glide()


def init_image(size: int = BASE) -> Image.Image:
    a = np.full((size, size, 3), 245, np.uint8)
    a[1:5, 1:4] = (220, 40, 40)
    return Image.fromarray(a)


def half_mask(size: int = BASE) -> Image.Image:
    a = np.zeros((size, size), np.uint8)
    a[:, size // 2:] = 255
    return Image.fromarray(a)


def test_config_round_trips_and_checks_channels():
    cfg = tiny_glide(upsampler=True, inpaint=True).config
    assert GLIDEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg and cfg.factor == 4
    with pytest.raises(ValueError, match="in_channels must be 6"):
        stage_config(3, 4 * BASE, BASE)
    with pytest.raises(ValueError, match="take the base's 8 px images"):
        GLIDEConfig(stage_config(), stage_config(6, 32, 16))


def test_generate_returns_images_with_parameters(system):
    images = system.generate("a red circle", negative_prompt="blue", num_images=2, seed=9, steps=2)
    assert len(images) == 2 and images[0].size == (BASE, BASE) and images[0].mode == "RGB"
    info = images[1].info
    assert info["prompt"] == "a red circle" and info["seed"] == str(9 + SEED_STRIDE) and info["guidance_type"] == "cfg"
    assert info["model"] == "tiny-glide" and info["batch_index"] == "1"
    a, b = (np.asarray(im, dtype=np.int16) for im in images)
    assert np.abs(a - b).max() > 0  # two draws of one prompt differ


def test_save_load_round_trip_and_t2i_load(tmp_path):
    a = tiny_glide(upsampler=True)
    a.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "system.json").read_text())["system"] == "glide"
    b = t2i.load(tmp_path / "m")
    assert isinstance(b, GLIDE) and b.config == a.config and b.name == a.name
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.sample("a red circle", seed=3, steps=2), b.sample("a red circle", seed=3, steps=2))


def test_cascade_makes_4x_images_from_the_base_image():
    system = tiny_glide(upsampler=True)
    x = system.sample(["a red circle", "two blue squares"], seed=1, steps=2)
    assert x.shape == (2, 3, 4 * BASE, 4 * BASE) and torch.isfinite(x).all()
    base = system.base
    seen = []
    hook = system.upsampler.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 3:].clone()))
    system.sample("a red circle", seed=1, steps=2)
    hook.remove()
    assert len(seen) == system.config.upsampler.sampling.steps and seen[0].shape == (1, 3, 4 * BASE, 4 * BASE)
    assert base is system.base and (seen[0] - seen[0].mean()).abs().max() > 0  # the low-res image reaches the UNet
    with pytest.raises(ValueError, match="multiples of 8"):
        system.sample("a red circle", width=20)


def test_inpainting_keeps_the_unmasked_region():
    """Both paths, the plain base (mask blending) and the inpainting model (mask + masked image as
    channels, plus blending), leave pixels outside the mask within 2/255 on average."""
    ref = np.asarray(init_image(), dtype=np.float32)
    for model in (tiny_glide(), tiny_glide(inpaint=True)):
        out = model.generate("a red circle", image=init_image(), mask=half_mask(), steps=3, seed=2)[0]
        diff = np.abs(np.asarray(out, dtype=np.float32) - ref)
        assert diff[:, :BASE // 2].mean() <= 2 and diff[:, BASE // 2:].mean() > 10
        assert out.info["mode"] == "inpaint"
    with pytest.raises(ValueError, match="inpainting model"):
        tiny_glide(inpaint=True).sample("a red circle")


def test_iterative_editing_from_the_command_line(tmp_path):
    """GLIDE's editing loop: generate, then inpaint a region of that image with a new prompt, twice; each
    edit keeps the pixels outside its mask (within 2/255 on average) and redraws the inside."""
    from t2i.cli import main

    folder = str(tiny_glide(inpaint=False).save(tmp_path / "glide"))
    common = ["--model", folder, "--steps", "3", "--no-progress"]
    assert main(["generate", "a red circle", *common, "--out", str(tmp_path / "0.png")]) == 0
    half_mask().save(tmp_path / "right.png")
    half_mask().transpose(Image.Transpose.ROTATE_90).save(tmp_path / "top.png")  # white = the upper half
    edits = [("a blue square", "right.png", np.s_[:, :BASE // 2], np.s_[:, BASE // 2:]),
             ("a green star", "top.png", np.s_[BASE // 2:, :], np.s_[:BASE // 2, :])]
    for i, (prompt, mask, kept, redrawn) in enumerate(edits):
        assert main(["inpaint", prompt, *common, "--image", str(tmp_path / f"{i}.png"), "--mask", str(tmp_path / mask),
                     "--seed", str(i + 1), "--out", str(tmp_path / f"{i + 1}.png")]) == 0
        before, after = (np.asarray(Image.open(tmp_path / f"{j}.png"), dtype=np.float32) for j in (i, i + 1))
        assert np.abs(after - before)[kept].mean() <= 2 and np.abs(after - before)[redrawn].mean() > 10
        assert Image.open(tmp_path / f"{i + 1}.png").text["prompt"] == prompt


def test_gradient_guidance_changes_the_sample_and_scale_zero_is_the_conditional_model(system):
    def redness(x, sigma, cond):  # a toy log p(y | x_t): how red the image is
        return x[:, 0].mean((1, 2)) - x[:, 1:].mean((1, 2, 3))

    cfg = system.sample("a red circle", seed=4, steps=3, guidance=1.0)  # no CFG: the conditional model alone
    clip = system.sample("a red circle", seed=4, steps=3, guidance=2.0, guidance_type="clip", guide=redness)
    zero = system.sample("a red circle", seed=4, steps=3, guidance=0.0, guidance_type="classifier", guide=redness)
    assert torch.equal(zero, cfg)
    assert (clip - cfg).abs().max() > 1e-2 and (clip[:, 0] - clip[:, 1:].mean(1)).mean() > (
        cfg[:, 0] - cfg[:, 1:].mean(1)).mean()
    with pytest.raises(ValueError, match="needs guide="):
        system.sample("a red circle", guidance_type="clip")
    with pytest.raises(ValueError, match="unknown guidance type"):
        system.sample("a red circle", guidance_type="clap", guide=redness)


SMALL = ["train.steps=2", "train.batch_size=2", "train.checkpoint_every=2", "train.log_every=1",
         "diffusion.num_samples=2", "diffusion.sample_steps=2"]


def test_training_options_train_and_load_as_a_cascade(tmp_path):
    quiet = dict(progress=False, log=lambda m: None)
    base = Trainer(load_recipe("tiny_glide", SMALL), tmp_path / "base", **quiet)
    base.run()
    up = Trainer(load_recipe("tiny_glide_upsampler", SMALL), tmp_path / "up", **quiet)
    up.run()
    batch = {"image": torch.rand(2, 3, 64, 64) * 2 - 1}
    from t2i.train.rng import SampleRNG

    x0, extra = up.stage.image_conditioning(batch["image"], SampleRNG([1, 2]))
    assert x0.shape == (2, 3, 32, 32) and extra.shape == (2, 3, 32, 32)  # a random crop of both
    system = t2i.api.system_from_training_runs(tmp_path / "base", tmp_path / "up")
    assert system.sample("a red circle", steps=2).shape == (1, 3, 64, 64)
    assert isinstance(t2i.load(tmp_path / "base"), GLIDE)  # a pixel run loads as a GLIDE base

    inpaint = Trainer(load_recipe("tiny_glide", SMALL + ["diffusion.inpaint=true", "diffusion.net.in_channels=7"]),
                      tmp_path / "inpaint", **quiet)
    assert inpaint.run().loss > 0
    x0, extra = inpaint.stage.image_conditioning(torch.rand(2, 3, 16, 16), SampleRNG([3, 4]))
    mask = extra[:, :1]
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0 < mask.mean() < 1
    assert torch.equal(extra[:, 1:], x0 * (1 - mask))  # the masked image
    assert t2i.api.system_from_training_runs(tmp_path / "inpaint").config.base.inpaint


def test_full_masks_make_one_network_both_base_and_inpainting_model(tmp_path):
    """full_masks: that fraction of samples erase the whole image (mask all ones), so the inpainting network
    also learns text-to-image; the exported stage then generates from text with an all-ones mask, and still
    takes a user's mask. Without full masks it stays an inpainting-only model."""
    from t2i.train.rng import SampleRNG

    inpaint = SMALL + ["diffusion.inpaint=true", "diffusion.net.in_channels=7"]
    trainer = Trainer(load_recipe("tiny_glide", inpaint + ["diffusion.full_masks=0.5"]), tmp_path / "run",
                      progress=False, log=lambda m: None)
    assert trainer.run().loss > 0
    masks = trainer.stage.image_conditioning(torch.rand(64, 3, 16, 16), SampleRNG(list(range(64))))[1][:, 0]
    whole = masks.flatten(1).min(1).values == 1
    assert 16 <= int(whole.sum()) <= 48 and masks[~whole].mean() < 0.9  # about half erased wholly
    grid = trainer.stage.grid_conditioning(4)[:, 0]  # the sample grid: half from text alone, half inpainted
    assert torch.all(grid[:2] == 1) and 0 < grid[2:].mean() < 1
    system = t2i.api.system_from_training_runs(tmp_path / "run")
    assert system.config.base.full_mask_txt2img and system.supports("txt2img") and system.supports("inpaint")
    calls = []
    system.base.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0][:, 3:].clone()))
    assert system.sample("a red circle", steps=2).shape == (1, 3, 16, 16)
    assert torch.all(calls[0][:, 0] == 1) and torch.all(calls[0][:, 1:] == 0)  # repaint all, nothing kept
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1
    out = system.sample("a red circle", steps=2, image=Image.new("RGB", (16, 16), "blue"),
                        mask=Image.fromarray((mask.numpy() * 255).astype("uint8")))
    assert out.shape == (1, 3, 16, 16) and torch.equal(calls[-1][:, 0], mask.expand_as(calls[-1][:, 0]))
    Trainer(load_recipe("tiny_glide", inpaint), tmp_path / "plain", progress=False, log=lambda m: None).run()
    plain = t2i.api.system_from_training_runs(tmp_path / "plain")
    assert not plain.supports("txt2img") and plain.supports("inpaint")
    with pytest.raises(RecipeError, match="full_masks = 0.5: erases regions for inpainting"):
        load_recipe("tiny_glide", ["diffusion.full_masks=0.5"])


@pytest.mark.parametrize("overrides,message", [
    (["diffusion.inpaint=true"], r"in_channels = 3: must be 7 \(3 image \+ 4 mask \+ erased image"),
    (["diffusion.lowres_size=8"], r"in_channels = 3: must be 6 \(3 image \+ 3 low-res"),
    (["diffusion.lowres_size=16", "diffusion.net.in_channels=6"], "lowres_size = 16: must be smaller"),
    (["diffusion.crop_size=8", "diffusion.first_stage='x'"], "are for pixel stages"),
])
def test_recipes_with_misfit_channels_are_named(tmp_path, overrides, message):
    with pytest.raises(RecipeError, match=message):
        Trainer(load_recipe("tiny_glide", overrides), tmp_path, progress=False, log=lambda m: None).run()


@pytest.mark.parametrize("name,extra", [("shapes_glide", 4), ("shapes_glide_upsampler", 3), ("shapes_glide_gpu", 0),
                                        ("shapes_glide_upsampler_gpu", 3), ("shapes_glide_inpaint_gpu", 4),
                                        ("tiny_glide_upsampler", 3)])
def test_glide_recipes_parse_and_their_channels_fit(name, extra):
    o = load_recipe(name).options
    assert o.extra_channels() == extra and o.net["in_channels"] == 3 + extra and o.pooled
    assert o.net["attention_block"] == "adm" and o.net["context_dim"] == o.net["pooled_dim"] == o.text["width"]


def test_object_masks_erase_a_named_objects_box(tmp_path):
    """object_masks = 1: every sample with a scene erases a box around one of its objects and is captioned by
    that object's name alone; samples without scene objects keep a random mask and their caption."""
    from t2i.train.rng import SampleRNG

    recipe = load_recipe("tiny_glide", SMALL + ["diffusion.inpaint=true", "diffusion.net.in_channels=7",
                                                "diffusion.object_masks=1.0"])
    trainer = Trainer(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    assert trainer.run().loss > 0  # the ShapesWorld batches carry their scenes' objects
    orange = {"shape": "star", "color": "orange", "r": 0.1, "center": [0.25, 0.5]}
    batch = {"caption": ["two things", "no scene"], "objects": [[orange], []], "image": torch.zeros(2, 3, 16, 16)}
    rng = SampleRNG([5, 6])
    captions, boxes = trainer.stage.object_targets(batch, rng)
    assert captions == ["an orange star", "no scene"] and boxes[1] is None
    x0, x1 = boxes[0][0], boxes[0][2]
    assert 0.25 - 0.18 - 1e-9 <= x0 <= 0.25 - 0.12 + 1e-9 and abs((x0 + x1) / 2 - 0.25) < 1e-9
    _, extra = trainer.stage.image_conditioning(batch["image"], SampleRNG([7, 8]), boxes=boxes)
    ys, xs = torch.nonzero(extra[0, 0], as_tuple=True)
    assert xs.min() == round(x0 * 16) and xs.max() == round(x1 * 16) - 1 and ys.min() == round(boxes[0][1] * 16)
    with pytest.raises(RecipeError, match="object_masks = 2"):
        load_recipe("tiny_glide", ["diffusion.object_masks=2"])
