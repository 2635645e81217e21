"""The contract every registered system keeps, on tiny random weights (`cls.tiny()`): a system joins
by `@register("name")` and this test covers it with no further code."""

import numpy as np
import pytest
import torch
from PIL import Image

import t2i
from t2i.api import generate_files
from t2i.systems import CAPABILITIES, SYSTEMS, GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")


def _noisy(system):
    with torch.no_grad():  # fresh weights zero some layers: noise everywhere so every path matters
        for p in system.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return system.eval()


@pytest.fixture(scope="module", params=sorted(SYSTEMS))
def system(request):
    torch.manual_seed(0)
    return _noisy(SYSTEMS[request.param].tiny())


def arrays(images):
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])


def test_same_seed_same_image_and_n_images(system):
    a = system.generate("a red circle", seed=3, num_images=2)
    b = system.generate(GenerationRequest(("a red circle",), seed=3, num_images=2))
    assert len(a) == 2 and np.array_equal(arrays(a), arrays(b))
    assert np.abs(arrays(a) - arrays(system.generate("a red circle", seed=4, num_images=2))).max() > 1e-2


def test_a_batch_equals_single_runs(system):
    """Image 0 of a batch is the single run with the request's seed (every system, every stage); with per-image
    noise image i is the single run with its own seed (GenerationRequest.image_seed)."""
    prompts = ["a red circle", "two blue squares"]
    seed1 = GenerationRequest(tuple(prompts), seed=5).image_seed(1)
    batch = system.sample(prompts, seed=5)
    assert (batch[:1] - system.sample(prompts[:1], seed=5)).abs().max() <= 3e-3
    if not system.per_image_noise:  # one generator for the batch (the LDM's shipped images): image 1 goes on
        assert (batch[1:] - system.sample(prompts[1:], seed=seed1)).abs().max() > 1e-2  # from image 0's draws
        return
    assert (batch[1:] - system.sample(prompts[1:], seed=seed1)).abs().max() <= 3e-3
    ancestral = system.sample(prompts, seed=5, sampler="euler_a")  # fresh noise at every step, per image too
    assert (ancestral[1:] - system.sample(prompts[1:], seed=seed1, sampler="euler_a")).abs().max() <= 3e-3


def test_negative_prompt_changes_the_output(system):
    a = system.sample("a red circle", seed=1, guidance=4.0)
    b = system.sample("a red circle", seed=1, guidance=4.0, negative_prompt="a blue square")
    assert (a - b).abs().max() > 1e-3


def test_unsupported_capability_is_a_clear_error(system):
    unsupported = [c for c in CAPABILITIES if not system.supports(c)]
    assert unsupported, "every system lacks some capability"
    if "mix" in unsupported:
        with pytest.raises(ValueError, match="does not support mix"):
            system.generate("a red circle", image=Image.new("RGB", (16, 16)), mix=0.5)
    if "control" in unsupported:
        with pytest.raises(ValueError, match="does not support control"):
            system.generate("a red circle", control=Image.new("RGB", (16, 16)))
    with pytest.raises(ValueError, match="unknown capability"):
        system.supports("teleport")


def test_save_load_round_trip_is_exact(system, tmp_path):
    system.save(tmp_path / "s")
    loaded = t2i.load(tmp_path / "s")
    assert type(loaded) is type(system)
    assert all(torch.equal(a, b) for a, b in zip(system.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(system.sample("a red circle", seed=2), loaded.sample("a red circle", seed=2))


def test_png_metadata_is_written(system, tmp_path):
    paths = generate_files(system, "a red circle", tmp_path / "out.png", seed=7, num_images=2, progress=False)
    seed = str(GenerationRequest(("a red circle",), seed=7).image_seed(1) if system.per_image_noise else 7)  # alone
    with Image.open(paths[1]) as im:
        assert im.info["prompt"] == "a red circle" and im.info["seed"] == seed and im.info["batch_index"] == "1"
        assert im.info["model"] == system.name
        alone = arrays(system.generate("a red circle", seed=int(im.info["seed"])))[0]
        assert not system.per_image_noise or np.abs(arrays([im])[0] - alone).max() <= 1.5 / 255


def test_caption_capability(system):
    """A system that supports caption gives n captions of an image, the same for the same seed; one that does not
    has no caption method to call."""
    image = Image.new("RGB", (16, 16), (220, 40, 40))
    if not system.supports("caption"):
        assert not callable(getattr(system, "caption", None))
        return
    a = system.caption(image, n=2, seed=1)
    assert len(a) == 2 and all(isinstance(c, str) for c in a) and a == system.caption(image, n=2, seed=1)
