"""The shipped Versatile Diffusion (t2i/weights/vd): it loads by name, stays within the issue's size limit, and
every flow runs on it (text -> image at 64 px, variations, dual guidance, captions and text variations in the
ShapesWorld vocabulary), so a broken export or loader shows up here."""

from pathlib import Path

import pytest

WEIGHTS = Path(__file__).resolve().parents[1] / "t2i" / "weights" / "vd"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (WEIGHTS / "system.json").is_file(), reason="no shipped VD weights")]


@pytest.fixture(scope="module")
def vd():
    import t2i

    return t2i.load("vd")


def test_the_network_is_within_40_mb_and_every_file_under_20_mib():
    files = [f for f in WEIGHTS.rglob("*") if f.is_file()]
    assert max(f.stat().st_size for f in files) < 20 * 2**20
    assert sum(f.stat().st_size for f in files if f.name.startswith("net")) <= 40e6


def test_image_flows_make_64_px_images(vd):
    image = vd.generate("a red circle", seed=0, steps=4)[0]
    assert image.size == (64, 64)
    assert [v.size for v in vd.vary(image, 2, seed=0, steps=4)] == [(64, 64)] * 2
    assert vd.mix("a blue square", image, 0.5, seed=0, steps=4)[0].size == (64, 64)


def test_text_flows_write_shapesworld_words(vd):
    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld

    world = ShapesWorld(size=64, seed=1000, length=1)
    caption = vd.caption(render(world.scene(0), 64), 1, seed=0, steps=4)[0]
    from t2i.encoders.tokenizer import split_words

    assert caption and set(split_words(caption)) <= set(vd.clip.tokenizer.vocab)
    assert len(vd.vary_text("two red circles", 2, seed=0, steps=4)) == 2
