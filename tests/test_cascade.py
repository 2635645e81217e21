"""A three-stage cascade from configs alone (vector prior -> 16 px -> 32 px), sampled by the one
stage loop: the shape of each stage comes from its config, the previous output feeds the next."""

import pytest
import torch

from t2i.systems import Cascade, CascadeConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_three_stage_cascade_from_configs():
    system = Cascade.tiny()
    with torch.no_grad():  # fresh weights zero some output layers: noise everywhere so every path matters
        for p in system.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    config = CascadeConfig.from_dict(system.config.to_dict())  # configs alone: JSON round trip
    assert config == system.config and [s.shape for s in config.stages] == [(16,), (3, 16, 16), (3, 32, 32)]
    rebuilt = Cascade(config, system.text_encoder)
    rebuilt.nets.load_state_dict(system.nets.state_dict())
    x = rebuilt.sample(["a red circle", "two blue squares"], seed=0)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    assert torch.equal(x, system.sample(["a red circle", "two blue squares"], seed=0))
    with torch.no_grad():  # the prior's vector reaches the 16 px stage
        rebuilt.nets[0].proj_out.bias.add_(1.0)
    assert (rebuilt.sample(["a red circle", "two blue squares"], seed=0) - x).abs().max() > 1e-4
