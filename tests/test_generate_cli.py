"""`t2i generate / img2img / inpaint / convert` on tiny t2i systems: files, PNG metadata, grids,
determinism, and a one-line error with exit status 2 for each bad input the issue lists."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import t2i
from t2i.api import shipped_weights
from t2i.cli import main
from t2i.systems import LDM

sys.path.insert(0, os.path.dirname(__file__))
from test_ldm import half_mask, init_image, tiny_ldm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_ldm().save(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    return str(tiny_ldm("clip").save(tmp_path_factory.mktemp("c") / "tiny-clip"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    init_image().save(d / "init.png")
    half_mask().save(d / "mask.png")
    half_mask(8).save(d / "small_mask.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err, f"expected a usage error from {argv}"
    return err[-1]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_writes_images_grid_and_metadata(model, tmp_path, capsys):
    out = tmp_path / "red.png"
    argv = ["generate", "a red circle", "--model", model, "-n", "3", "--seed", "11", "--steps", "3",
            "--sampler", "euler", "--guidance", "2.5", "--negative", "blue", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    written = capsys.readouterr().out
    files = [tmp_path / f"red-{i}.png" for i in range(3)] + [tmp_path / "red-grid.png"]
    assert all(f.is_file() and str(f) in written for f in files)
    text = Image.open(files[1]).text
    assert text["prompt"] == "a red circle" and text["negative_prompt"] == "blue" and text["seed"] == "11"
    assert text["sampler"] == "euler" and text["steps"] == "3" and text["guidance"] == "2.5"
    assert text["model"] == "tiny-word" and text["batch_index"] == "1"
    assert Image.open(files[3]).size == (32, 32) and Image.open(files[3]).text["prompt"] == "a red circle"
    assert not np.array_equal(_pixels(files[0]), _pixels(files[1]))

    again = tmp_path / "again.png"
    assert main(argv[:-3] + ["--out", str(again), "--no-progress"]) == 0
    assert np.array_equal(_pixels(files[0]), _pixels(tmp_path / "again-0.png"))  # same seed, same image


def test_python_api_matches_cli(model, tmp_path):
    assert main(["generate", "two green triangles", "--model", model, "--seed", "4", "--out", str(tmp_path / "a.png"),
                 "--no-progress"]) == 0
    image = t2i.load(model).generate("two green triangles", seed=4)[0]
    assert np.array_equal(np.asarray(image), _pixels(tmp_path / "a.png"))


def test_progress_bar_over_sampler_steps(model, tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", model, "--steps", "3", "--out", str(tmp_path / "p.png")]) == 0
    assert "3/3" in capsys.readouterr().err


def test_img2img_and_inpaint_verbs(model, pictures, tmp_path):
    common = ["--model", model, "--steps", "4", "--no-progress"]
    assert main(["img2img", "a red circle", "--image", str(pictures / "init.png"), "--strength", "0.5",
                 "--out", str(tmp_path / "i.png"), *common]) == 0
    assert Image.open(tmp_path / "i.png").text["mode"] == "img2img"
    assert main(["inpaint", "a red circle", "--image", str(pictures / "init.png"), "--mask", str(pictures / "mask.png"),
                 "--out", str(tmp_path / "p.png"), *common]) == 0
    assert Image.open(tmp_path / "p.png").text["mode"] == "inpaint"
    left = (slice(None), slice(0, 4))  # far from the mask's edge the kept half stays close to the init image
    assert np.abs(_pixels(tmp_path / "p.png")[left].astype(float) - _pixels(pictures / "init.png")[left]).mean() < \
        np.abs(_pixels(tmp_path / "i.png")[left].astype(float) - _pixels(pictures / "init.png")[left]).mean() + 40


@pytest.mark.skipif((shipped_weights("ldm") / "system.json").is_file(), reason="shipped weights are installed")
def test_without_shipped_weights_says_so(capsys):
    assert "no shipped weights are installed yet" in _error(capsys, ["generate", "a red circle"])


def test_bad_inputs_are_one_line_errors(model, pictures, tmp_path, capsys):
    m = ["--model", model, "--no-progress", "--out", str(tmp_path / "x.png")]
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(256))
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x02junk")
    cases = [
        (["generate", "", *m], "prompt is empty"),
        (["generate", "   ", *m], "prompt is empty"),
        (["generate", "x", "--system", "nosuch"], "unknown system or path 'nosuch'"),
        (["generate", "x", "--sampler", "plms", *m], "unknown sampler 'plms'"),
        (["generate", "x", "--steps", "0", *m], "--steps must be at least 1"),
        (["generate", "x", "--width", "18", *m], "multiples of 4"),
        (["generate", "x", "-n", "0", *m], "at least 1"),
        (["img2img", "x", "--image", str(pictures / "missing.png"), *m], "no such file"),
        (["img2img", "x", "--image", str(pictures / "notes.txt"), *m], "is not an image"),
        (["img2img", "x", "--image", str(pictures / "init.png"), "--strength", "1.5", *m], "strength"),
        (["inpaint", "x", "--image", str(pictures / "init.png"), "--mask", str(pictures / "small_mask.png"), *m],
         "must be the same size"),
        (["generate", "x", "--mask", str(pictures / "mask.png"), *m], "--mask needs an --image"),
        (["generate", "x", "--model", str(tmp_path / "nothing")], "no such file or folder"),
        (["generate", "x", "--model", str(tmp_path / "junk.safetensors")], "not a safetensors file"),
        (["generate", "x", "--model", str(tmp_path / "old.ckpt")], "never unpickles"),
        (["generate", "x", "--model", str(pictures)], "neither a t2i system folder"),
    ]
    for argv, message in cases:
        line = _error(capsys, argv)
        assert message in line and line.startswith(f"t2i {argv[0]}: error:"), (argv, line)
    assert not list(tmp_path.glob("x*.png"))


def test_convert_round_trips(clip_model, model, tmp_path, capsys):
    assert main(["convert", clip_model, str(tmp_path / "diffusers")]) == 0  # default: t2i -> diffusers
    assert (tmp_path / "diffusers" / "model_index.json").is_file()
    assert main(["convert", str(tmp_path / "diffusers"), str(tmp_path / "back")]) == 0  # default: -> t2i
    assert main(["convert", str(tmp_path / "back"), str(tmp_path / "one.safetensors"), "--to", "single-file"]) == 0
    assert main(["convert", str(tmp_path / "one.safetensors"), str(tmp_path / "again"), "--config",
                 str(tmp_path / "diffusers")]) == 0
    first = LDM.load(clip_model)
    for folder in ("back", "again"):
        other = LDM.load(tmp_path / folder)
        a, b = first.state_dict(), other.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
        assert torch.equal(first.sample("a red circle", steps=2, guidance=3.0),
                           other.sample("a red circle", steps=2, guidance=3.0))
    capsys.readouterr()
    assert "no diffusers equivalent" in _error(capsys, ["convert", model, str(tmp_path / "word-diffusers")])
    assert "not empty" in _error(capsys, ["convert", clip_model, str(tmp_path / "back")])


def test_convert_to_half_precision_t2i_folder(model, tmp_path, capsys):
    from safetensors import safe_open

    assert main(["convert", model, str(tmp_path / "half"), "--to", "t2i", "--dtype", "float16"]) == 0
    with safe_open(tmp_path / "half" / "unet.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    full, half = LDM.load(model), LDM.load(tmp_path / "half")
    a, b = full.state_dict(), half.state_dict()
    assert all(b[k].dtype == a[k].dtype and torch.equal(b[k], a[k].half().to(a[k].dtype)) for k in a)
    capsys.readouterr()
    assert "is for t2i folders" in _error(capsys, ["convert", model, str(tmp_path / "d"), "--dtype", "float16"])


def test_entry_point_exit_status(tmp_path):
    """The installed command prints one line and exits 2 (no traceback)."""
    r = subprocess.run([sys.executable, "-m", "t2i.cli", "generate", "x", "--steps", "0", "--model", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--steps must be at least 1" in r.stderr


def test_safetensors_header_starting_with_0x80_is_not_mistaken_for_pickle(tmp_path):
    """A valid file whose little-endian header length has 0x80 as first byte loads (it once read as pickle)."""
    from t2i.io.weights import load_safetensors, save_safetensors

    for pad in range(300):
        path = save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no padding gave a header length starting with 0x80")
    assert torch.equal(load_safetensors(path)["w"], torch.ones(2))


def test_training_run_becomes_a_system(tmp_path, capsys):
    """`t2i train` runs (autoencoder, then latent UNet) load as a system and convert to a t2i folder
    that gives the same image: the path shipped weights take."""
    ae, ldm = tmp_path / "runs" / "tiny_autoencoder", tmp_path / "runs" / "tiny_latent"
    assert main(["train", "tiny_autoencoder", "--out", str(ae), "--no-progress", "--set", "train.steps=4"]) == 0
    assert main(["train", "tiny_latent", "--out", str(ldm), "--no-progress", "--set", "train.steps=4",
                 "--set", f"diffusion.first_stage={ae}"]) == 0
    assert main(["convert", str(ldm), str(tmp_path / "shipped")]) == 0
    run_system, shipped = t2i.load(ldm), t2i.load(tmp_path / "shipped")
    assert shipped.config == run_system.config and shipped.config.text.kind == "word"
    assert torch.equal(run_system.sample("a red circle", steps=3), shipped.sample("a red circle", steps=3))


def test_eval_shapes_model_generates_every_prompt_and_scores(model, tmp_path, capsys):
    from t2i.eval.suite import CATEGORIES, build_suite

    out = tmp_path / "m.json"
    argv = ["eval", "shapes", "--model", model, "--n-per-prompt", "1", "--steps", "1", "--sampler", "euler",
            "--guidance", "2", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["categories"]) == set(CATEGORIES) and result["images"] == len(build_suite())
    assert result["model"] == {"name": model, "steps": 1, "sampler": "euler", "guidance": 2.0, "n_per_prompt": 1,
                               "seed": 0}
    assert "| **overall** |" in capsys.readouterr().out
    assert "unknown sampler" in _error(capsys, ["eval", "shapes", "--model", model, "--sampler", "nope"])
    assert "--steps" in _error(capsys, ["eval", "shapes", "--model", model, "--steps", "0"])
    assert "exactly one of" in _error(capsys, ["eval", "shapes", "--n-per-prompt", "1"])
