"""diffusers UNet2DConditionModel <-> t2i UNet: same outputs both ways, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel  # noqa: E402

from t2i.io.diffusers_unet import (  # noqa: E402
    from_diffusers,
    load_diffusers_unet,
    save_diffusers_unet,
    to_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
)
from t2i.nn.unet import UNet, UNetConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny layers: one thread is faster on a busy machine

TOL = 1e-4
BASE = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
VARIANTS = {
    "sd1": dict(),  # 1x1-conv projections, "attention_head_dim" = 8 heads everywhere (the quirk)
    "sd2": dict(use_linear_projection=True, attention_head_dim=(2, 4)),  # linear projections, heads per level
    "adm": dict(  # ADM scale-shift resblocks + unCLIP-style projected pooled embedding, 2 transformer blocks
        resnet_time_scale_shift="scale_shift",
        class_embed_type="projection",
        projection_class_embeddings_input_dim=12,
        transformer_layers_per_block=2,
        attention_head_dim=4,
    ),
    "classes": dict(num_class_embeds=10, in_channels=7, down_block_types=("CrossAttnDownBlock2D",) * 2,
                    up_block_types=("CrossAttnUpBlock2D",) * 2),
}


def _diffusers_model(variant: str) -> UNet2DConditionModel:
    torch.manual_seed(0)
    m = UNet2DConditionModel(**{**BASE, **VARIANTS[variant]}).eval()
    with torch.no_grad():  # noise everywhere: fresh diffusers models zero some convs
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    return m


def _inputs(variant: str, cfg: UNetConfig, size=(8, 8)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, *size, generator=g)
    t = torch.tensor([3.0, 710.5])
    ctx = torch.randn(2, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = None
    if cfg.pooled_dim:
        pooled = torch.randn(2, cfg.pooled_dim, generator=g)
    if cfg.num_classes:
        pooled = torch.tensor([2, 9])
    return x, t, ctx, mask, pooled


def _theirs(m, x, t, ctx, mask, pooled, **kw):
    with torch.no_grad():
        return m(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask, class_labels=pooled, **kw).sample


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_t2i_loads_diffusers_and_diffusers_loads_t2i(variant):
    theirs = _diffusers_model(variant)
    cfg = unet_config_from_diffusers(dict(theirs.config))
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))
    x, t, ctx, mask, pooled = _inputs(variant, cfg)
    ref = _theirs(theirs, x, t, ctx, mask, pooled)
    with torch.no_grad():
        out = ours(x, t, context=ctx, context_mask=mask, pooled=pooled)
    assert ref.abs().max() > 0.1  # a real signal, not zeros
    assert (out - ref).abs().max() <= TOL

    # the other way: a freshly built diffusers model of the exported config loads the t2i export
    linear = bool(theirs.config.use_linear_projection)
    fresh = UNet2DConditionModel(**unet_config_to_diffusers(cfg, linear_projection=linear, sample_size=8)).eval()
    fresh.load_state_dict(to_diffusers(ours.state_dict(), cfg, linear_projection=linear))  # strict
    assert (_theirs(fresh, x, t, ctx, mask, pooled) - out).abs().max() <= TOL
    # and the export is exactly their original tensors (nothing lost in fusing q/k/v or 1x1 convs)
    back = to_diffusers(ours.state_dict(), cfg, linear_projection=linear)
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())


def test_control_residuals_match_diffusers_controlnet_inputs():
    theirs = _diffusers_model("sd1")
    cfg = unet_config_from_diffusers(dict(theirs.config))
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))
    x, t, ctx, mask, _ = _inputs("sd1", cfg)
    # shapes of diffusers' down_block_res_samples for this config: conv_in, res+attn, downsample, res
    g = torch.Generator().manual_seed(3)
    down = [torch.randn(2, c, s, s, generator=g) for c, s in ((32, 8), (32, 8), (32, 4), (64, 4))]
    mid = torch.randn(2, 64, 4, 4, generator=g)
    ref = _theirs(theirs, x, t, ctx, mask, None, down_block_additional_residuals=tuple(down),
                  mid_block_additional_residual=mid)
    with torch.no_grad():
        out = ours(x, t, context=ctx, context_mask=mask, control=[*down, mid])
    assert (out - ref).abs().max() <= TOL
    assert (ref - _theirs(theirs, x, t, ctx, mask, None)).abs().max() > 0.1


def test_odd_latent_sizes_match_diffusers():
    theirs = _diffusers_model("sd1")
    cfg = unet_config_from_diffusers(dict(theirs.config))
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))
    x, t, ctx, mask, _ = _inputs("sd1", cfg, size=(7, 10))
    with torch.no_grad():
        assert (ours(x, t, context=ctx, context_mask=mask) - _theirs(theirs, x, t, ctx, mask, None)).abs().max() <= TOL


def test_diffusers_folder_round_trip(tmp_path):
    theirs = _diffusers_model("sd2")
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    ours = load_diffusers_unet(tmp_path / "theirs").eval()
    save_diffusers_unet(ours, tmp_path / "ours", linear_projection=True, sample_size=8)
    again = UNet2DConditionModel.from_pretrained(tmp_path / "ours").eval()
    x, t, ctx, mask, _ = _inputs("sd2", ours.config)
    with torch.no_grad():
        out = ours(x, t, context=ctx, context_mask=mask)
    assert (_theirs(again, x, t, ctx, mask, None) - out).abs().max() <= TOL
    assert (_theirs(theirs, x, t, ctx, mask, None) - out).abs().max() <= TOL
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["use_linear_projection"] is True


def test_pickle_weights_are_refused(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    cfg = unet_config_to_diffusers(UNetConfig(block_channels=(32, 64), num_res_blocks=1, attention_levels=(0,),
                                              context_dim=32, norm_groups=8, num_heads=2))
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle stream
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin.*pickle"):
        load_diffusers_unet(folder)


def test_misfit_checkpoint_names_the_tensor_and_why():
    theirs = _diffusers_model("sd1")
    cfg = unet_config_from_diffusers(dict(theirs.config))
    state = dict(theirs.state_dict())
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    state[key] = state[key.replace("to_k", "to_v")] = torch.zeros(32, 16)  # context width 16, config says 32
    with pytest.raises(ValueError, match=r"to_k\.weight' \(32, 16\).*attn2\.to_kv\.weight.*expects \(64, 32\)"):
        from_diffusers(state, cfg)
    state["conv_in.weight"] = torch.zeros(32, 9, 3, 3)  # an inpainting checkpoint under a 4-channel config
    with pytest.raises(ValueError, match=r"conv_in\.weight' \(32, 9, 3, 3\).*expects \(32, 4, 3, 3\)"):
        from_diffusers(state, cfg)
    del state[key]
    with pytest.raises(ValueError, match=r"missing tensors.*attn2\.to_k\.weight"):
        from_diffusers(state, cfg)
    state = dict(theirs.state_dict(), extra=torch.zeros(1))
    with pytest.raises(ValueError, match=r"unexpected tensors.*extra"):
        from_diffusers(state, cfg)


def test_unsupported_diffusers_options_are_refused():
    d = {**BASE, "class_embed_type": "identity"}  # "timestep" maps to aug_level_embed now
    with pytest.raises(ValueError, match="class_embed_type"):
        unet_config_from_diffusers(d)
    with pytest.raises(ValueError, match="addition_embed_type"):
        unet_config_from_diffusers({**BASE, "addition_embed_type": "text_time"})
    with pytest.raises(ValueError, match="mirror"):
        unet_config_from_diffusers({**BASE, "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")})
    glide = UNetConfig(block_channels=(32, 64), num_res_blocks=1, attention_levels=(1,), num_heads=2, context_dim=32,
                       norm_groups=8, attention_block="adm")
    with pytest.raises(ValueError, match="ADM/GLIDE"):
        unet_config_to_diffusers(glide)
    placed = UNetConfig.from_dict({**glide.to_dict(), "attention_block": "transformer", "position_encoding": True})
    with pytest.raises(ValueError, match="no pixel position encoding"):
        unet_config_to_diffusers(placed)


def test_head_dim_config_exports_as_heads_per_level():
    cfg = UNetConfig(block_channels=(32, 64), num_res_blocks=1, attention_levels=(0,), num_heads=None, head_dim=16,
                     context_dim=32, norm_groups=8)
    d = unet_config_to_diffusers(cfg)
    assert d["attention_head_dim"] == [2, 4]
    assert unet_config_from_diffusers(d).heads_at(1) == cfg.heads_at(1) == (4, 16)


@pytest.mark.slow
@pytest.mark.parametrize("sd", ["sd15", "sd21"])
def test_real_stable_diffusion_sizes_match_both_ways(sd):
    """SD 1.5 (8 heads, 1x1-conv projections) and SD 2.1 (64-wide heads per level, linear) at full width."""
    over = dict(sample_size=8, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if sd == "sd15":
        over.update(cross_attention_dim=768, attention_head_dim=8)
    else:
        over.update(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**over).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.02)
    cfg = unet_config_from_diffusers(dict(theirs.config))
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500.0])
    ctx = torch.randn(1, 77, over["cross_attention_dim"], generator=g)
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=ctx).sample
        out = ours(x, t, context=ctx)
    scale = ref.abs().max()
    assert scale > 0.02 and (out - ref).abs().max() <= min(TOL, 1e-3 * scale)  # std-0.02 weights: small outputs
    linear = sd == "sd21"
    back = to_diffusers(ours.state_dict(), cfg, linear_projection=linear)
    assert back.keys() == theirs.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())
