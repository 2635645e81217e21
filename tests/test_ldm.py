"""The LDM system on its own (no diffusers): config round trips, the t2i folder, determinism, batching,
img2img / inpainting behaviour and the clear errors the issue lists."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.encoders import WordTokenizer
from t2i.encoders.clip_tokenizer import CLIPTokenizer, bytes_to_unicode
from t2i.nn.autoencoder import AutoencoderConfig
from t2i.nn.unet import UNetConfig
from t2i.systems import LDM, LDMConfig, SamplingConfig, ScheduleConfig, TextConfig
from t2i.systems.base import image_to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def tiny_config(kind: str = "word", in_channels: int = 4, vocab: int = 0) -> LDMConfig:
    """A few-thousand-parameter LDM: 16 px images, 8 px latents."""
    if kind == "word":
        text = TextConfig(kind="word", encoder=dict(width=32, layers=1, heads=4, max_length=12))
    else:
        text = TextConfig(kind="clip", context_mask=False, encoder=dict(
            vocab_size=vocab, max_length=12, pool="eos", eos_token_id=1,
            transformer=dict(width=32, layers=1, heads=4, activation="quick_gelu", causal=True)))
    return LDMConfig(
        unet=UNetConfig(in_channels=in_channels, out_channels=4, block_channels=(32, 64), num_res_blocks=1,
                        attention_levels=(0,), num_heads=4, context_dim=32, norm_groups=8),
        autoencoder=AutoencoderConfig(channels=(32, 64), layers_per_block=1, norm_groups=8),
        text=text, schedule=ScheduleConfig(), prediction="eps",
        sampling=SamplingConfig(sampler="ddim", steps=4, guidance=3.0), sample_size=SIZE)


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE vocabulary with a handful of merges, built without any download."""
    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("l", "e</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab, merges, max_length=12)


def tiny_ldm(kind: str = "word", in_channels: int = 4, seed: int = 0) -> LDM:
    torch.manual_seed(seed)
    tok = WordTokenizer.for_shapes() if kind == "word" else clip_tokenizer()
    system = LDM.build(tiny_config(kind, in_channels, vocab=len(tok.vocab)), tok, name=f"tiny-{kind}")
    with torch.no_grad():  # fresh weights zero some layers: noise everywhere so every path matters
        for p in system.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return system.eval()


def init_image() -> Image.Image:
    a = np.full((SIZE, SIZE, 3), 245, np.uint8)
    a[3:10, 2:8] = (220, 40, 40)
    return Image.fromarray(a)


def half_mask(size: int = SIZE) -> Image.Image:
    a = np.zeros((size, size), np.uint8)
    a[:, size // 2:] = 255
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def system():
    return tiny_ldm()


def test_config_round_trips_through_json():
    for cfg in (tiny_config(), tiny_config("clip", vocab=600), tiny_config(in_channels=9)):
        assert LDMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert tiny_config(in_channels=9).inpainting and not tiny_config().inpainting
    with pytest.raises(ValueError, match="unknown fields"):
        LDMConfig.from_dict({**tiny_config().to_dict(), "nonsense": 1})
    with pytest.raises(ValueError, match="does not fit"):
        LDMConfig(unet=UNetConfig(in_channels=5), autoencoder=AutoencoderConfig())


@pytest.mark.parametrize("kind", ["word", "clip"])
def test_save_load_gives_identical_weights_and_images(kind, tmp_path):
    a = tiny_ldm(kind)
    a.save(tmp_path / "m")
    b = LDM.load(tmp_path / "m")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.config == a.config and b.name == a.name
    assert torch.equal(a.sample("a red circle", seed=3), b.sample("a red circle", seed=3))


def test_deterministic_per_seed_and_batched(system):
    x = system.sample(["a red circle", "two blue squares"], num_images=2, seed=5)
    assert x.shape == (4, 3, SIZE, SIZE) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, system.sample(["a red circle", "two blue squares"], num_images=2, seed=5))
    assert (x - system.sample(["a red circle", "two blue squares"], num_images=2, seed=6)).abs().max() > 1e-2
    assert (x[0] - x[1]).abs().max() > 1e-3  # two draws of one prompt differ
    assert (x[0] - x[2]).abs().max() > 1e-3


def test_guidance_and_negative_prompt_change_the_image(system):
    base = system.sample("a red circle", seed=1, guidance=3.0)
    assert (base - system.sample("a red circle", seed=1, guidance=1.0)).abs().max() > 1e-3
    assert (base - system.sample("a red circle", seed=1, guidance=3.0, negative_prompt="blue")).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "euler_a", "heun", "dpmpp_2m"])
def test_every_sampler_runs(system, sampler):
    calls = []
    x = system.sample("a red circle", sampler=sampler, steps=3, progress=calls.append)
    assert x.shape == (1, 3, SIZE, SIZE) and torch.isfinite(x).all()
    assert calls == [0, 1, 2]


def test_img2img_strength_controls_how_much_is_redrawn(system):
    """With a network that predicts zero noise the sampler keeps its start, the init image's latents
    noised to the first kept step's sigma: low strength stays near the image, full strength does not."""
    still = copy.deepcopy(system)
    with torch.no_grad():
        still.unet.conv_out.weight.zero_()
        still.unet.conv_out.bias.zero_()
    ref = still.decode(still.encode_image(image_to_tensor(init_image()), torch.Generator().manual_seed(0)))
    errors = [(still.sample("a red circle", image=init_image(), strength=s, steps=8) - ref).abs().mean()
              for s in (0.125, 0.5, 1.0)]
    assert errors[0] < 0.05 < errors[2] and errors[0] < errors[1] < errors[2]


def test_mask_blending_keeps_the_unmasked_region(system, monkeypatch):
    """After the last step the kept half of the latents is exactly the init image's latents."""
    decoded = []
    monkeypatch.setattr(system, "decode", lambda z: decoded.append(z) or LDM.decode(system, z))
    ref = system.encode_image(image_to_tensor(init_image()), torch.Generator().manual_seed(4))  # sample()'s 1st draw
    system.sample("a red circle", image=init_image(), mask=half_mask(), steps=6, seed=4)
    latents = decoded[-1]  # (1, 4, 8, 8); the mask's right half is latent columns 4..7
    assert torch.allclose(latents[..., :4], ref[..., :4], atol=1e-6)
    assert (latents[..., 4:] - ref[..., 4:]).abs().mean() > 0.1  # the masked half was redrawn


def test_inpainting_model_takes_mask_channels():
    sys9 = tiny_ldm(in_channels=9)
    x = sys9.sample("a red circle", image=init_image(), mask=half_mask(), steps=3)
    y = sys9.sample("a red circle", image=init_image(), mask=Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)),
                    steps=3)
    assert x.shape == (1, 3, SIZE, SIZE) and (x - y).abs().max() > 1e-3  # the mask reaches the UNet
    with pytest.raises(ValueError, match="inpainting model"):
        sys9.sample("a red circle")


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(steps=0), "at least 1"),
    (dict(sampler="plms"), "unknown sampler"),
    (dict(width=18), "multiples of 4"),
    (dict(height=2), "multiples of 4"),
    (dict(image=init_image(), strength=0.0), "strength"),
    (dict(image=init_image(), strength=0.1, steps=4), "leaves no step"),
    (dict(mask=half_mask()), "needs an init image"),
    (dict(image=init_image(), mask=half_mask(8)), "must be the same size"),
])
def test_clear_errors(system, kwargs, message):
    kwargs = {"prompt": "a red circle", **kwargs}
    with pytest.raises(ValueError, match=message):
        system.sample(kwargs.pop("prompt"), **kwargs)


def test_generate_returns_images_with_parameters(system):
    images = system.generate("a red circle", negative_prompt="blue", num_images=2, seed=9, steps=3)
    assert len(images) == 2 and images[0].size == (SIZE, SIZE)
    info = images[1].info
    assert info["prompt"] == "a red circle" and info["negative_prompt"] == "blue" and info["seed"] == "9"
    assert info["steps"] == "3" and info["sampler"] == "ddim" and info["guidance"] == "3.0"
    assert info["model"] == "tiny-word" and info["batch_index"] == "1"


def test_sampling_config_timesteps():
    """The conventions that reproduce diffusers' schedulers (checked against diffusers in the parity tests)."""
    schedule = ScheduleConfig().build()
    lead = SamplingConfig(steps=4, spacing="leading", offset=1)
    assert lead.timesteps(schedule, 4).tolist() == [751, 501, 251, 1]
    dpm = SamplingConfig(spacing="linspace", round_timesteps=True, extra_step=True)
    assert dpm.timesteps(schedule, 4).tolist() == [999, 749, 500, 250]  # linspace(0, 999, 5), rounded
    sig = SamplingConfig(final_sigma="min").sigmas(schedule, 4)
    assert sig[-1] == schedule.sigmas[0] and len(sig) == 5
    assert SamplingConfig(init_noise="sigma").noise_scale(3.0) == 3.0
    assert SamplingConfig().noise_scale(3.0) == pytest.approx(10**0.5)
