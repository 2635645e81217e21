"""The shipped ShapesWorld LDM (t2i/weights/ldm): it loads by name, `t2i demo` draws with it, and it
draws what single-object prompts ask (checked by the ShapesEval detector), so a broken export or
a loader regression shows up as a failing test, not as noise in a user's PNG."""

import pytest

from conftest import needs_shipped_ldm
from t2i.cli import DEMO_PROMPT, main
from t2i.eval.shapeseval import score_image
from t2i.eval.suite import build_suite

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_shipped_ldm]



def test_single_object_prompts_are_drawn(shipped_ldm):
    specs = [s for s in build_suite() if s.category == "single_object"][:3]
    passed = [score_image(s, im) for s in specs for im in shipped_ldm.generate(s.prompt, num_images=2, seed=0)]
    assert sum(passed) >= 5, f"{sum(passed)} of 6 images show what {[s.prompt for s in specs]} ask"


def test_demo_writes_the_images_and_says_where(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'demo-grid.png'}" in printed
    from PIL import Image

    with Image.open(tmp_path / "demo-0.png") as im:
        assert im.size == (64, 64) and im.info["prompt"] == DEMO_PROMPT and im.info["seed"] == "0"
