"""The shipped edges ControlNet places objects where the map says, which the base LDM alone does not."""

from pathlib import Path

import pytest

from t2i.eval.control import evaluate_control, system_generator

WEIGHTS = Path(__file__).resolve().parents[1] / "t2i" / "weights" / "controlnet"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "system.json").is_file(), reason="no shipped ControlNet weights")


def test_shipped_edges_controlnet_follows_its_map(one_thread):
    import t2i

    system = t2i.load("controlnet")
    assert system.config.base == "ldm" and "edges" in system.config.kinds
    rows = evaluate_control(system_generator(system, steps=10), ("edges",), n=6)
    # the README's figures (64 scenes, 20 steps): 0.57 of objects placed with the map, 0.04 without
    assert rows["edges"]["placed_objects"] >= 0.3 > rows["base (no control)"]["placed_objects"]
    assert rows["edges"]["mean_iou"] > rows["base (no control)"]["mean_iou"] + 0.2
