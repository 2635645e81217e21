"""Issue 20 [robust]: every bad input gets a one-line error before any model work (exit status 2 from the
CLI), batches run in chunks, inpainting keeps the pixels outside the mask exactly, image writes are atomic
and their names predictable, prompts the text encoder cuts or does not know are warned about."""

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from test_ldm import half_mask, init_image, tiny_ldm  # noqa: E402

import t2i.api  # noqa: E402
from t2i.api import check_device, generate_files, output_paths, shipped_weights  # noqa: E402
from t2i.cli import main  # noqa: E402
from t2i.io.images import save_png  # noqa: E402
from t2i.systems import SYSTEMS, GenerationRequest  # noqa: E402
from t2i.systems.request import RequestLimits  # noqa: E402
from t2i.systems.stage import PromptWarning  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def system():
    return tiny_ldm()


@pytest.fixture(scope="module")
def model(tmp_path_factory, system):
    return str(system.save(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    init_image().save(d / "init.png")
    half_mask().save(d / "mask.png")
    Image.new("L", (5000, 5000)).save(d / "huge.png")  # 25 MP, over the default 16.7 MP input limit
    (d / "a_file").write_text("x")
    (d / "taken-0.png").mkdir()
    return d


def _error(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, f"expected one usage-error line from {argv}, got {code}: {err}"
    return err[0]


def _cli_cases(model, pictures, tmp_path):
    m = ["--model", model, "--no-progress", "--out", str(tmp_path / "x.png")]
    broken = tmp_path / "broken"
    broken.mkdir()
    cfg = json.loads((Path(model) / "system.json").read_text())
    cfg["config"]["unet"]["num_res_blocks"] = "two"
    (broken / "system.json").write_text(json.dumps(cfg))
    notjson = tmp_path / "notjson"
    notjson.mkdir()
    (notjson / "system.json").write_bytes(b"\xff\xfe{ not json")
    img = ["--image", str(pictures / "init.png")]
    return [
        (["generate", "x", "--guidance", "inf", *m], "--guidance must be a finite number"),
        (["generate", "x", "--guidance", "nan", *m], "--guidance must be a finite number"),
        (["generate", "x", "--guidance", "1e9", *m], "--guidance must be within"),
        (["generate", "x", "--seed", "-1", *m], "--seed must be at least 0"),
        (["generate", "x", "--seed", str(2**70), *m], "--seed must be at most 18446744073709551615"),
        (["generate", "x", "-n", "100000", *m], "--max-images"),
        (["generate", "x", "-n", "-1", *m], "at least 1"),
        (["generate", "x", "--width", "100000", "--height", "100000", *m], "-at most"[1:]),
        (["generate", "x", "--width", "4096", "--height", "4096", *m], "--max-pixels"),
        (["generate", "x", "--width", "0", *m], "--width must be at least 1"),
        (["generate", "x", "--steps", "5000", *m], "--steps must be at most 1000"),
        (["generate", "x", "--batch-size", "0", *m], "--batch-size must be at least 1"),
        (["generate", "x", "--max-pixels", "0", *m], "--max-pixels must be at least 1"),
        (["generate", "x", "--max-images", "-5", *m], "--max-images must be at least 1"),
        (["generate", "x", "--device", "banana", *m], "unknown device 'banana'"),
        (["generate", "x", "--device", "cuda:99", *m], "'cuda:99' is not available"),
        (["generate", "x", "--device", "gpu", *m], "unknown device 'gpu'"),
        (["generate", "x", "--device", "meta", *m], "not one t2i runs on"),
        (["generate", "x", "--model", model, "--out", str(pictures / "a_file" / "x.png")], "is a file, not a folder"),
        (["generate", "x", "--model", model, "--out", str(pictures / "taken.gif")], "t2i writes"),
        (["generate", "x", "-n", "2", "--model", model, "--out", str(pictures / "taken.png")], "it is a directory"),
        (["generate", "\udcff\udcfe", *m], "undecodable bytes"),
        (["generate", "a\x00b", *m], "NUL"),
        (["generate", "x", "--negative", "\udcff", *m], "negative prompt holds undecodable bytes"),
        (["generate", "x", "--model", str(broken)], "LDMConfig.unet.num_res_blocks must be int | tuple[int, ...], got 'two'"),
        (["generate", "x", "--model", str(notjson)], "not valid JSON"),
        (["img2img", "x", "--image", str(pictures / "huge.png"), *m], "5000x5000 px, more than"),
        (["img2img", "x", *img, "--max-input-pixels", "100", *m], "--max-input-pixels"),
        (["img2img", "x", *img, "--strength", "0", *m], "--strength must be in (0, 1]"),
        (["img2img", "x", *img, "--strength", "nan", *m], "--strength must be a finite number"),
        (["inpaint", "x", *img, "--mask", str(pictures / "mask.png"), "--feather", "-1", *m], "--feather must be"),
        (["inpaint", "x", *img, "--mask", str(pictures / "mask.png"), "--feather", "inf", *m], "--feather must be"),
        (["eval", "shapes", "--model", model, "--device", "cuda:99"], "'cuda:99' is not available"),
    ]


def test_cli_bad_inputs_are_one_line_errors_before_any_model_work(model, pictures, tmp_path, capsys, monkeypatch):
    cases = _cli_cases(model, pictures, tmp_path)
    for argv, message in cases:
        line = _error(capsys, argv)
        assert message in line and line.startswith(f"t2i {argv[0]}: error:"), (argv, line)
    assert not list(tmp_path.glob("x*.png"))

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(t2i.api, "load", no_model)  # `t2i generate` imports it from t2i.api when it runs
    for out in (pictures / "a_file" / "x.png", pictures / "taken.png"):
        assert "error:" in _error(capsys, ["generate", "x", "-n", "2", "--model", model, "--out", str(out)])
    assert len(cases) >= 30


def test_decompression_bomb_is_refused_not_warned(pictures, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # init.png (16x16 = 256 px) is fine; a bigger one is a bomb
    Image.new("RGB", (40, 40)).save(tmp_path / "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        line = _error(capsys, ["img2img", "x", "--image", str(tmp_path / "bomb.png"), "--max-input-pixels", "10000",
                               "--out", str(tmp_path / "o.png")])
    assert "decompression bomb" in line


PY_CASES = [
    (dict(prompts=None), "prompt must be text"),
    (dict(prompts=b"a red circle"), "decode the bytes first"),
    (dict(prompts=42), "prompt must be text"),
    (dict(prompts=[]), "prompt is empty"),
    (dict(prompts=["a", None]), "prompt must be text"),
    (dict(prompts="   "), "prompt is empty"),
    (dict(negative_prompt=None), "negative prompt must be text"),
    (dict(num_images=-1), "at least 1"),
    (dict(num_images=2.0), "num_images must be a whole number"),
    (dict(num_images=10**12), "max-images"),
    (dict(seed=2**70), "seed must be at most"),
    (dict(seed=-3), "seed must be at least 0"),
    (dict(seed="7"), "seed must be a whole number"),
    (dict(steps=0), "steps must be at least 1"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(steps=True), "steps must be a whole number"),
    (dict(width=0), "width must be at least 1"),
    (dict(width=16.0), "width must be a whole number"),
    (dict(width=3000, height=3000), "max-pixels"),
    (dict(guidance=float("inf")), "guidance must be a finite number"),
    (dict(guidance=float("nan")), "guidance must be a finite number"),
    (dict(guidance="3"), "guidance must be a finite number"),
    (dict(strength=0.0), "strength must be in (0, 1]"),
    (dict(sampler=["ddim"]), "unknown sampler"),
    (dict(sampler="plms"), "unknown sampler 'plms'"),
    (dict(precision="fp64"), "unknown precision"),
    (dict(guidance_type="cfgx"), "unknown guidance type"),
    (dict(threshold=5), "threshold must be text"),
    (dict(image="init.png"), "image must be a PIL image"),
    (dict(mask=half_mask()), "needs an init image"),
    (dict(image=init_image(), mask=half_mask(8)), "same size"),
    (dict(image=init_image(), limits=RequestLimits(max_input_pixels=100)), "max-input-pixels"),
    (dict(feather=float("nan")), "feather must be a finite number"),
    (dict(batch_size=0), "batch_size must be at least 1"),
    (dict(limits="big"), "limits must be a RequestLimits"),
    (dict(prompts="a\udcffb"), "undecodable bytes"),
]


@pytest.mark.parametrize("fields, message", PY_CASES, ids=[str(i) for i in range(len(PY_CASES))])
def test_python_bad_inputs_are_one_line_value_errors(fields, message):
    fields = {"prompts": "a red circle", **fields}
    with pytest.raises(ValueError) as e:
        GenerationRequest(**fields)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_python_generate_checks_before_work(system):
    with pytest.raises(ValueError, match="must be at least 1"):
        system.generate("a red circle", num_images=-1)
    with pytest.raises(ValueError, match="prompt must be text"):
        system.generate(None)
    with pytest.raises(ValueError, match="unknown device"):
        t2i.api.load("ldm", device="cdua")


def test_check_device():
    check_device("cpu")
    absent = "cuda:99" if torch.cuda.is_available() else "cuda"
    for bad in (absent, "nope", "mps" if not torch.backends.mps.is_available() else "nope2"):
        with pytest.raises(ValueError):
            check_device(bad)


def test_chunks_give_the_images_of_one_big_batch(system):
    prompts = ["a red circle", "a blue square", "a green triangle"]
    one = system.sample(prompts, num_images=2, seed=4, batch_size=8, sampler="ddim", steps=3)
    chunked = system.sample(prompts, num_images=2, seed=4, batch_size=4, sampler="ddim", steps=3)
    assert one.shape == chunked.shape == (6, 3, 16, 16)
    assert (one - chunked).abs().max() <= 3e-3  # a batch equals single runs within the contract's tolerance
    a = system.generate(prompts, seed=4, batch_size=2, sampler="euler_a", steps=3)  # ancestral: per-chunk draws
    b = system.generate(prompts, seed=4, batch_size=2, sampler="euler_a", steps=3)
    assert [im.info["prompt"] for im in a] == prompts and [im.info["batch_index"] for im in a] == ["0", "1", "2"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def _inpainting_systems():
    return [name for name in sorted(SYSTEMS) if "inpaint" in SYSTEMS[name].tiny().capabilities]


@pytest.mark.parametrize("name", _inpainting_systems())
def test_inpainting_keeps_pixels_outside_the_mask_exactly(name):
    system = SYSTEMS[name].tiny()
    size = system.generate("a red circle", steps=2)[0].size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    black = Image.new("L", size, 0)
    out = system.generate("a red circle", image=image, mask=black, steps=2, num_images=2)
    assert all(np.array_equal(np.asarray(im), np.asarray(image)) for im in out)  # repaint nothing: the input
    half = np.zeros((size[1], size[0]), np.uint8)
    half[:, : size[0] // 2] = 255
    for feather in (0.0, 3.0):
        out = system.generate("a red circle", image=image, mask=Image.fromarray(half), steps=2, feather=feather)[0]
        got, want = np.asarray(out).astype(int), np.asarray(image).astype(int)
        assert np.array_equal(got[:, size[0] // 2:], want[:, size[0] // 2:])
        assert np.abs(got[:, : size[0] // 2] - want[:, : size[0] // 2]).max() > 0


@pytest.mark.skipif(not (shipped_weights("ldm") / "system.json").is_file(), reason="no shipped ldm weights")
def test_shipped_ldm_inpainting_with_an_all_black_mask_returns_the_input():
    ldm = t2i.api.load("ldm")
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = ldm.generate("a red circle", image=image, mask=Image.new("L", (64, 64), 0), steps=2)[0]
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_output_names(tmp_path):
    (tmp_path / "dir").mkdir()
    assert output_paths(tmp_path / "dir", 1) == ([tmp_path / "dir" / "t2i.png"], None)
    assert output_paths(str(tmp_path / "new") + "/", 1)[0] == [tmp_path / "new" / "t2i.png"]
    assert output_paths(tmp_path / "x.jpg", 1)[0] == [tmp_path / "x.jpg"]
    assert output_paths(tmp_path / "x", 1)[0] == [tmp_path / "x.png"]
    paths, grid = output_paths(tmp_path / "x.jpeg", 3)
    assert [p.name for p in paths] == ["x-0.jpeg", "x-1.jpeg", "x-2.jpeg"] and grid.name == "x-grid.jpeg"
    assert output_paths(tmp_path / "x.png", 65)[1] is None  # no grid for more than 64 images
    with pytest.raises(ValueError, match="t2i writes"):
        output_paths(tmp_path / "x.gif", 1)


def test_jpeg_output_and_directory_output(model, tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", model, "--out", str(tmp_path / "a.jpg"), "--steps", "2",
                 "--no-progress"]) == 0
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.format == "JPEG" and json.loads(im.info["comment"])["prompt"] == "a red circle"
    (tmp_path / "d").mkdir()
    assert main(["generate", "a red circle", "--model", model, "--out", str(tmp_path / "d"), "--steps", "2",
                 "--no-progress"]) == 0
    assert (tmp_path / "d" / "t2i.png").is_file() and not (tmp_path / "d.png").exists()
    assert "--out" in capsys.readouterr().out or True


def test_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    save_png(Image.new("RGB", (4, 4), (1, 2, 3)), target, {"a": "b"})
    before = target.read_bytes()

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        save_png(Image.new("RGB", (4, 4), (9, 9, 9)), target, {"a": "c"})
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_generate_files_streams_and_checks_the_path_first(system, tmp_path):
    with pytest.raises(ValueError, match="is a file"):
        (tmp_path / "f").write_text("x")
        generate_files(system, "a red circle", tmp_path / "f" / "out.png")
    paths = generate_files(system, "a red circle", tmp_path / "o.png", num_images=3, batch_size=2, steps=2,
                           progress=False)
    assert [p.name for p in paths] == ["o-0.png", "o-1.png", "o-2.png", "o-grid.png"]


def test_prompt_warnings(system, model, tmp_path, capsys):
    with pytest.warns(PromptWarning, match="does not know.*'zebra'"):
        system.generate("a red zebra", steps=1)
    long = " ".join(["red circle"] * 10)  # 20 words; the tiny encoder reads 11
    with pytest.warns(PromptWarning, match="20 tokens long but the text encoder reads 11"):
        system.generate(long, steps=1)
    with pytest.warns(PromptWarning, match="negative prompt has words"):
        system.generate("a red circle", negative_prompt="blurry", steps=1)
    capsys.readouterr()
    assert main(["generate", "a red zebra", "--model", model, "--out", str(tmp_path / "z.png"), "--steps", "1",
                 "--no-progress"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert err == ["t2i generate: warning: the prompt has words the tokenizer does not know (read as unknown): "
                   "'zebra'"]


def test_an_init_image_larger_than_max_pixels_needs_a_size():
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="the output would be 64x64 px"):
        GenerationRequest("x", image=image, limits=RequestLimits(max_pixels=1000))
    GenerationRequest("x", image=image, width=16, height=16, limits=RequestLimits(max_pixels=1000))
