"""The unCLIP system (Ramesh et al. 2022) on tiny random weights: variations of an image, text diffs,
interpolations with fixed decoder noise, the prior's pick-the-closest option, and one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.nn.prior import slerp
from t2i.systems import SYSTEMS, UnCLIP

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def system():
    s = UnCLIP.tiny()
    with torch.no_grad():
        for p in s.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return s.eval()


def source(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))


def arrays(images):
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])


def test_registered_with_vary():
    assert SYSTEMS["unclip"] is UnCLIP and UnCLIP.tiny().supports("vary")


def test_variations_differ_and_repeat_by_seed(system):
    a = system.vary(source(), 3, seed=1)
    assert len(a) == 3 and a[0].size == (32, 32)
    assert np.abs(arrays(a)[0] - arrays(a)[1]).max() > 1e-2  # new noise per variation
    assert np.array_equal(arrays(a), arrays(system.vary(source(), 3, seed=1)))
    toward = system.vary(source(), 3, toward="a blue circle", amount=0.5, seed=1)
    assert np.abs(arrays(toward) - arrays(a)).max() > 1e-2


def test_interpolation_ends_at_the_images_and_keeps_its_noise(system):
    frames = system.interpolate(source(0), source(1), frames=4, seed=2)
    assert len(frames) == 4
    with torch.no_grad():
        ends = system.decode(torch.cat([system.embed_image(source(0)), system.embed_image(source(1))]),
                             *interp_text(system), torch.Generator().manual_seed(2), shared=True)
    got = arrays(frames)[[0, -1]]
    assert np.abs(got - ends.permute(0, 2, 3, 1).numpy()).max() <= 1 / 255 + 1e-6  # shared noise: frame = its end
    e = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    mid = slerp(e[:1], e[1:], 0.5)
    assert torch.allclose(mid.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert torch.allclose((mid * e[0]).sum(), (mid * e[1]).sum(), atol=1e-5)


def interp_text(system):
    from t2i.systems.unclip_config import clip_text

    text = (clip_text(system.clip, [""] * 2), clip_text(system.clip, [""] * 2))
    return text, system.plan


def test_two_prior_picks_change_the_image(system):
    two = UnCLIP(dataclasses.replace(system.config, prior_picks=2), system.clip)
    two.nets.load_state_dict(system.nets.state_dict())
    a, b = system.sample("a red circle", seed=3), two.sample("a red circle", seed=3)
    assert a.shape == b.shape == (1, 3, 32, 32) and (a - b).abs().max() > 1e-3


def test_bad_inputs_are_one_line(system):
    with pytest.raises(ValueError, match="at least 2 frames"):
        system.interpolate(source(), source(), frames=1)
    with pytest.raises(ValueError, match="at least 8 px"):
        system.vary(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match="amount"):
        system.vary(source(), toward="a red circle", amount=2.0)


def test_a_clip_shared_with_another_system_is_not_stored_again(tmp_path):
    from t2i.systems.vd import VersatileDiffusion

    vd = VersatileDiffusion.tiny(seed=1)  # tiny VD and tiny unCLIP use one CLIP configuration
    home = vd.save(tmp_path / "vd")
    config = dataclasses.replace(UnCLIP.tiny().config, clip_from=str(home))
    shared = UnCLIP(config, vd.clip).eval()
    folder = shared.save(tmp_path / "unclip")
    assert not (folder / "clip.safetensors").exists() and not (folder / "tokenizer.json").exists()
    again = UnCLIP.load(folder)
    assert all(torch.equal(a, b) for a, b in zip(again.clip.state_dict().values(), vd.clip.state_dict().values()))
    assert np.array_equal(arrays(again.vary(source(), 1, seed=0)), arrays(shared.vary(source(), 1, seed=0)))
    (home / "system.json").unlink()
    with pytest.raises(ValueError, match="shared from"):
        UnCLIP.load(folder)
