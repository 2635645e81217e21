"""`t2i vary` and `t2i interpolate` on a tiny random unclip folder: the files they write, and one-line errors
for a non-image, a tiny or huge image, frames < 2 and a system without variations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.cli import main
from t2i.systems import UnCLIP

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    system = UnCLIP.tiny()
    with torch.no_grad():
        for p in system.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return system.save(tmp_path_factory.mktemp("unclip") / "tiny")


def picture(path, side=24, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_vary_writes_variations_and_a_grid(folder, tmp_path, capsys):
    out = tmp_path / "v.png"
    assert main(["vary", picture(tmp_path / "a.png"), "-n", "2", "--model", str(folder), "--out", str(out),
                 "--toward", "a blue circle", "--amount", "0.3"]) == 0
    with Image.open(tmp_path / "v-1.png") as im:
        assert im.size == (32, 32) and im.info["mode"] == "vary" and im.info["toward"] == "a blue circle"
    assert (tmp_path / "v-grid.png").is_file()


def test_interpolate_writes_a_strip_and_a_gif(folder, tmp_path):
    a, b = picture(tmp_path / "a.png", seed=0), picture(tmp_path / "b.png", seed=1)
    assert main(["interpolate", a, b, "--frames", "3", "--model", str(folder), "--out", str(tmp_path / "i.png")]) == 0
    with Image.open(tmp_path / "i.png") as strip, Image.open(tmp_path / "i.gif") as gif:
        assert strip.size == (3 * 32, 32) and gif.n_frames == 3


@pytest.mark.parametrize("case, message", [
    ("text", "not an image"), ("tiny", "at least 8 px"), ("huge", "more than the 100 pixels"),
    ("frames", "--frames 1: must be at least 2"), ("missing", "no such file")])
def test_bad_inputs_are_one_line_errors(folder, tmp_path, capsys, case, message):
    good = picture(tmp_path / "a.png")
    image = {"text": tmp_path / "x.png", "tiny": picture(tmp_path / "t.png", side=4), "huge": good,
             "frames": good, "missing": tmp_path / "none.png"}[case]
    (tmp_path / "x.png").write_text("not a picture")
    args = ["interpolate", str(image), good, "--frames", "1" if case == "frames" else "2", "--model", str(folder),
            "--out", str(tmp_path / "o.png")] + (["--max-input-pixels", "100"] if case == "huge" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_system_without_variations_is_refused(tmp_path, capsys):
    from t2i.systems import Cascade

    model = Cascade.tiny().save(tmp_path / "cascade")
    assert main(["vary", picture(tmp_path / "a.png"), "--model", str(model), "--out", str(tmp_path / "v.png")]) == 2
    assert "does not make variations" in capsys.readouterr().err
