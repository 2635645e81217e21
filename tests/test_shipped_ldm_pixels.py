"""The shipped `ldm` draws the same pixels as when the references were made (max difference 1/255):
txt2img with DPM-Solver++ and DDIM, img2img and inpainting, small batches. A refactor of the
sampling path that changes an image fails here. Regenerate with scripts/regen_ldm_reference.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import needs_shipped_ldm

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("regen_ldm_reference", ROOT / "scripts" / "regen_ldm_reference.py")
regen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regen)

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_shipped_ldm]



@pytest.mark.parametrize("case", sorted(regen.cases()))
def test_same_pixels_as_the_reference(shipped_ldm, case):
    ref = np.asarray(Image.open(regen.OUT / f"{case}.png").convert("RGB")).astype(int)
    got = regen.render(shipped_ldm, regen.cases()[case]).astype(int)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1, f"{case}: max difference {np.abs(got - ref).max()}/255"
