"""The shipped ControlNets (edges, segmentation) place objects where the map says, which the base LDM alone does not."""

from pathlib import Path

import pytest

from t2i.eval.control import evaluate_control, system_generator

WEIGHTS = Path(__file__).resolve().parents[1] / "t2i" / "weights" / "controlnet"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "system.json").is_file(), reason="no shipped ControlNet weights")


@pytest.mark.parametrize("kind", ["edges", "segmentation"])
def test_shipped_controlnet_follows_its_map(one_thread, kind):
    import t2i

    system = t2i.load("controlnet")
    assert system.config.base == "ldm" and kind in system.config.kinds
    rows = evaluate_control(system_generator(system, steps=10), (kind,), n=6)
    # the README's figures (64 scenes, 20 steps): 0.57 / 0.56 of objects placed with the map, 0.04 without
    assert rows[kind]["placed_objects"] >= 0.3 > rows["base (no control)"]["placed_objects"]
    assert rows[kind]["mean_iou"] > rows["base (no control)"]["mean_iou"] + 0.2
