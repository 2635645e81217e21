"""Sampling precision: bf16 autocast of the networks, asked by a request (fp32 | bf16 | auto), keeps the
samplers in float32, stays close to fp32 and is recorded in the images' metadata."""

import numpy as np
import pytest
import torch

from t2i.nn import precision
from t2i.systems import SYSTEMS, GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bf16_sampling_is_close_to_fp32_and_labelled():
    torch.manual_seed(0)
    system = SYSTEMS["ldm"].tiny().eval()
    fp32 = system.generate("a red circle", seed=2, num_images=2, steps=4)
    bf16 = system.generate("a red circle", seed=2, num_images=2, steps=4, precision="bf16")
    a, b = (np.stack([np.asarray(im, dtype=np.float32) for im in ims]) for ims in (fp32, bf16))
    assert 0 < np.abs(a - b).mean() < 4  # in 1/255: bf16 networks, float32 sampler
    assert bf16[0].info["precision"] == "bf16" and "precision" not in fp32[0].info


def test_auto_follows_the_hardware(monkeypatch):
    torch.manual_seed(0)
    system = SYSTEMS["ldm"].tiny().eval()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    auto = system.sample("a red circle", seed=2, steps=3, precision="auto")
    assert torch.equal(auto, system.sample("a red circle", seed=2, steps=3))  # no native bf16: fp32
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        GenerationRequest(("a red circle",), precision="fp8")
