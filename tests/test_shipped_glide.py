"""The shipped GLIDE (t2i/weights/glide): it loads by name with its upsampler and both guides, stays within
the issue's size limit, makes 64 px images from text, inpaints with the same network without touching the
kept pixels, and takes every guidance type, so a broken export or loader shows up here."""

from pathlib import Path

import pytest
import torch

WEIGHTS = Path(__file__).resolve().parents[1] / "t2i" / "weights" / "glide"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (WEIGHTS / "system.json").is_file(), reason="no shipped GLIDE weights")]


@pytest.fixture(scope="module")
def glide():
    import t2i

    return t2i.load("glide")


def test_the_folder_holds_base_upsampler_and_guides_within_30_mb():
    files = [f for f in WEIGHTS.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 30e6
    assert max(f.stat().st_size for f in files) < 20 * 2**20
    for part in ("base", "upsampler", "guide_clip", "guide_classifier"):
        assert (WEIGHTS / part).is_dir(), part


def test_text_to_image_is_64_px_and_inpainting_keeps_the_unmasked_pixels(glide):
    assert glide.supports("txt2img") and glide.supports("inpaint") and glide.upsampler is not None
    image = glide.generate("a red circle", seed=0, steps=6)[0]
    assert image.size == (64, 64)
    mask = torch.zeros(64, 64)
    mask[:32, :32] = 1
    from PIL import Image

    edited = glide.generate("a blue square", image=image, mask=Image.fromarray((mask.numpy() * 255).astype("uint8")),
                            seed=1, steps=6)[0]
    before, after = (torch.tensor(list(im.convert("RGB").getdata())).view(64, 64, 3) for im in (image, edited))
    kept = mask == 0
    assert torch.equal(before[kept], after[kept])
    assert (before[~kept] - after[~kept]).abs().float().mean() > 1  # the masked region was redrawn


@pytest.mark.parametrize("guidance_type", ["cfg", "clip", "classifier"])
def test_every_guidance_type_runs_on_the_shipped_guides(glide, guidance_type):
    image = glide.generate("a green star", seed=0, steps=4, guidance_type=guidance_type)[0]
    assert image.size == (64, 64) and image.info["guidance_type"] == guidance_type
