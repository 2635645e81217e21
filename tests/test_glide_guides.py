"""GLIDE's guides as saved artefacts: a noise-aware CLIP run and a classifier run (a few training steps each)
exported with `t2i convert` into a tiny GLIDE folder's guide_clip/ and guide_classifier/, loaded back
identically, and used by `t2i generate --guidance-type clip|classifier` (found in the folder, or --guide PATH)
and `system.generate(..., guidance_type=...)`; every misuse is a one-line error with exit status 2."""

import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import t2i
from t2i.api import convert, guide_from_training_run, load_guide
from t2i.cli import GUIDANCE_TYPES, main
from t2i.systems.glide import GUIDANCE_TYPES as SYSTEM_GUIDANCE_TYPES
from t2i.systems.guides import GUIDES, GuideConfig
from t2i.train import Trainer, load_recipe

sys.path.insert(0, os.path.dirname(__file__))
from test_glide import tiny_glide  # noqa: E402
from test_ldm import tiny_ldm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIZE = 16  # ShapesWorld's smallest images: the guides' and the tiny GLIDE's side
SMALL = ["train.steps=2", "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1", "data.length=8"]
GUIDANCE = 100.0  # two training steps leave the guides' gradients small
RECIPES = {"clip": ("tiny_clip", ["clip.noise_aware=true", "clip.num_samples=2"]),
           "classifier": ("tiny_classifier", ["classifier.num_samples=2"])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> a two-step `t2i train` run of that guide (16 px)."""
    root = tmp_path_factory.mktemp("runs")
    for kind, (recipe, extra) in RECIPES.items():
        Trainer(load_recipe(recipe, SMALL + extra), root / kind, progress=False, log=lambda m: None).run()
    return {kind: root / kind for kind in RECIPES}


@pytest.fixture(scope="module")
def folder(runs, tmp_path_factory):
    """A tiny 16 px GLIDE folder holding both guides, written by `t2i convert RUN FOLDER/guide_<kind>`."""
    path = tiny_glide(size=SIZE).save(tmp_path_factory.mktemp("glide") / "tiny")
    meta = json.loads((path / "system.json").read_text())  # clip x0 to [-1, 1] as GLIDE samples: a random
    meta["config"]["base"]["sampling"]["clip_sample"] = 1.0  # UNet's huge x0 would saturate every pixel
    (path / "system.json").write_text(json.dumps(meta))
    for kind, run in runs.items():
        assert main(["convert", str(run), str(path / f"guide_{kind}")]) == 0
    return path


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, f"expected a one-line usage error from {argv}, got {err}"
    return err[0]


def test_guides_round_trip_through_their_folders(runs, folder, tmp_path):
    system = t2i.load(folder)
    x, sigma = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0.5, 3.0])
    prompts = ["a red circle and a blue star", "two crosses"]
    for kind, run in runs.items():
        trained, saved = guide_from_training_run(run), load_guide(folder / f"guide_{kind}", kind)
        assert type(saved) is GUIDES[kind] and saved.config == trained.config and saved.name == kind
        a, b = trained.state_dict(), saved.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(trained.log_prob(prompts)(x, sigma, None), saved.log_prob(prompts)(x, sigma, None))
        same = [system.sample("a red circle", seed=5, guidance=GUIDANCE, guidance_type=kind, guide=g)
                for g in (trained, saved, None)]  # None: the folder's guide_<kind>/
        assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])
        unguided = system.sample("a red circle", seed=5, guidance=0.0, guidance_type=kind)  # the conditional model
        assert (same[0] - unguided).abs().max() > 0.25  # the guide's gradient moved the sample
        half = convert(run, tmp_path / f"{kind}16", dtype="float16")  # stored as fp16, loaded back as float32
        assert torch.allclose(load_guide(half).log_prob(prompts)(x, sigma, None),
                              saved.log_prob(prompts)(x, sigma, None), atol=1e-2)
    with pytest.raises(ValueError, match="needs a noise-aware CLIP"):
        GuideConfig("clip", {**load_guide(folder / "guide_clip").config.net, "noise_aware": False})
    with pytest.raises(ValueError, match="40 \\(colour, shape\\) pairs"):
        GuideConfig("classifier", {**load_guide(folder / "guide_classifier").config.net, "num_labels": 3})


def test_converting_a_glide_folder_keeps_its_guides(folder, tmp_path):
    x, sigma = torch.randn(1, 3, SIZE, SIZE), torch.tensor([1.0])
    assert main(["convert", str(folder), str(tmp_path / "half"), "--to", "t2i", "--dtype", "float16"]) == 0
    for kind in ("clip", "classifier"):
        before, after = load_guide(folder / f"guide_{kind}", kind), load_guide(tmp_path / "half" / f"guide_{kind}", kind)
        assert after.config == before.config
        assert torch.allclose(after.log_prob(["a red circle"])(x, sigma, None),
                              before.log_prob(["a red circle"])(x, sigma, None), atol=1e-2)
    assert not (tiny_glide(size=SIZE).save(tmp_path / "fresh") / "guide_clip").exists()  # built, not loaded: none


def test_cli_generates_with_each_guidance_type(folder, tmp_path, capsys):
    common = ["--model", str(folder), "--seed", "3", "--guidance", str(GUIDANCE), "--no-progress"]
    pixels = {}
    for kind in GUIDANCE_TYPES:
        out = tmp_path / f"{kind}.png"
        assert main(["generate", "a red circle", *common, "--guidance-type", kind, "--out", str(out)]) == 0
        text = Image.open(out).text
        assert text["guidance_type"] == kind and text["guidance"] == str(GUIDANCE)
        assert text.get("guide") == (None if kind == "cfg" else kind)  # the exported run's name
        pixels[kind] = _pixels(out)
    assert np.abs(pixels["clip"] - pixels["cfg"]).max() > 0 and np.abs(pixels["classifier"] - pixels["cfg"]).max() > 0
    assert np.abs(pixels["clip"] - pixels["classifier"]).max() > 0
    image = t2i.load(folder).generate("a red circle", seed=3, guidance=GUIDANCE, guidance_type="clip")[0]  # == CLI
    assert np.array_equal(np.asarray(image, dtype=np.int16), pixels["clip"]) and image.info["guide"] == "clip"
    assert GUIDANCE_TYPES == SYSTEM_GUIDANCE_TYPES


def test_guide_option_overrides_the_folder(folder, runs, tmp_path):
    torch.manual_seed(7)
    other = GUIDES["clip"].build(load_guide(folder / "guide_clip").config, name="other")
    for p in other.parameters():  # a different CLIP: its gradient differs everywhere
        torch.nn.init.normal_(p, std=0.3)
    other.save(tmp_path / "other")
    common = ["generate", "two blue squares", "--model", str(folder), "--seed", "2", "--guidance", str(GUIDANCE),
              "--guidance-type", "clip", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "folder.png")]) == 0
    assert main(common + ["--guide", str(runs["clip"]), "--out", str(tmp_path / "run.png")]) == 0
    assert main(common + ["--guide", str(tmp_path / "other"), "--out", str(tmp_path / "other.png")]) == 0
    assert np.array_equal(_pixels(tmp_path / "folder.png"), _pixels(tmp_path / "run.png"))  # the run it came from
    assert np.abs(_pixels(tmp_path / "folder.png") - _pixels(tmp_path / "other.png")).max() > 0
    assert Image.open(tmp_path / "other.png").text["guide"] == "other"
    system = t2i.load(folder)
    a = system.sample("two blue squares", seed=2, guidance=GUIDANCE, guidance_type="clip", guide=tmp_path / "other")
    b = system.sample("two blue squares", seed=2, guidance=GUIDANCE, guidance_type="clip", guide=other)
    assert torch.equal(a, b)


def test_guidance_errors_are_one_line(folder, runs, tmp_path, capsys):
    ldm = tiny_ldm().save(tmp_path / "ldm")
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("guide_*"))
    gen = ["generate", "a red circle", "--no-progress", "--out", str(tmp_path / "x.png")]
    assert "needs a GLIDE system" in _error(capsys, gen + ["--model", str(ldm), "--guidance-type", "clip"])
    assert "needs a GLIDE system" in _error(capsys, gen + ["--model", str(ldm), "--guidance-type", "classifier",
                                                           "--guide", str(folder / "guide_classifier")])
    msg = _error(capsys, gen + ["--model", str(bare), "--guidance-type", "classifier"])
    assert f"no classifier guide: {bare / 'guide_classifier'} does not exist" in msg
    msg = _error(capsys, gen + ["--model", str(folder), "--guidance-type", "clip", "--guide",
                                str(folder / "guide_classifier")])
    assert "holds a classifier guide, not a clip guide" in msg
    assert "holds a clip guide, not a classifier guide" in _error(
        capsys, gen + ["--model", str(folder), "--guidance-type", "classifier", "--guide", str(runs["clip"])])
    assert "not a clip guide" in _error(capsys, gen + ["--model", str(folder), "--guidance-type", "clip",
                                                       "--guide", str(folder)])
    assert "--guide needs --guidance-type" in _error(capsys, gen + ["--model", str(folder), "--guide",
                                                                    str(folder / "guide_clip")])
    assert "no such folder" in _error(capsys, gen + ["--model", str(folder), "--guidance-type", "clip",
                                                     "--guide", str(tmp_path / "missing")])
    assert "converts to a t2i guide folder only" in _error(capsys, ["convert", str(runs["clip"]), str(tmp_path / "d"),
                                                                   "--to", "diffusers"])
    with pytest.raises(SystemExit) as e:
        main(gen + ["--model", str(folder), "--guidance-type", "clap"])
    assert e.value.code == 2 and "invalid choice: 'clap'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a clip guide, not a system"):
        t2i.load(folder / "guide_clip")
    with pytest.raises(ValueError, match="a classifier run is a guide, not a system"):
        t2i.load(runs["classifier"])
    with pytest.raises(ValueError, match="sees 16 px images but the base stage samples 32x32"):
        t2i.load(folder).sample("a red circle", guidance_type="clip", width=32, height=32)
    with pytest.raises(ValueError, match="takes no guide"):
        t2i.load(folder).sample("a red circle", guide=folder / "guide_clip")
    meta = json.loads((folder / "guide_clip" / "system.json").read_text())
    assert meta["system"] == "clip_guide" and meta["config"]["kind"] == "clip"


def test_glide_guidance_benchmark_smoke(folder, tmp_path, capsys):
    """benchmarks/glide_guidance.py on the tiny folder, one prompt per category: rows for every type, their
    network evaluations per image (cfg: 2 per step; gradient guidance at --match unet: twice the steps of
    1 UNet + 1 guide evaluation), scores in range, and a plot or a message saying why there is none."""
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "glide_guidance.py")
    spec = importlib.util.spec_from_file_location("glide_guidance", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    plot = tmp_path / "plot.png"
    rows = bench.main(["--model", str(folder), "--limit", "1", "--n-per-prompt", "2", "--steps", "2",
                       "--reference", "8", "--cfg-scales", "1", "3", "--clip-scales", str(GUIDANCE),
                       "--classifier-scales", str(GUIDANCE), "--plot", str(plot), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "| guidance | scale | steps |" in out and "| classifier | 100 | 4 |" in out
    cost = {(r["type"], r["scale"]): (r["steps"], r["unet_evals"], r["guide_evals"]) for r in rows}
    assert cost == {("cfg", 1.0): (2, 2, 0), ("cfg", 3.0): (2, 4, 0), ("clip", GUIDANCE): (4, 4, 4),
                    ("classifier", GUIDANCE): (4, 4, 4)}
    assert all(0 <= r["overall"] <= 1 and r["fd"] >= 0 and r["images"] == 14 and r["seconds"] > 0 for r in rows)
    assert json.loads((tmp_path / "r.json").read_text()) == rows
    assert plot.is_file() if importlib.util.find_spec("matplotlib") else "matplotlib is not installed" in out
    rows = bench.main(["--model", str(folder), "--types", "clip", "--match", "steps", "--limit", "1", "--steps", "2",
                       "--reference", "8", "--clip-scales", "1", "--plot", ""])
    assert [(r["type"], r["steps"], r["unet_evals"], r["guide_evals"]) for r in rows] == [("clip", 2, 2, 2)]
