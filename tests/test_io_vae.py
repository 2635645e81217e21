"""VAE compatibility: diffusers AutoencoderKL and the original LDM single-file layout, both directions."""

import json

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAE
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from t2i.io.diffusers_vae import (
    from_diffusers,
    load_diffusers_vae,
    save_diffusers_vae,
    to_diffusers,
    vae_config_from_diffusers,
    vae_config_to_diffusers,
)
from t2i.io.ldm_vae import PREFIX, from_ldm, to_ldm, vae_config_from_ldm
from t2i.io.weights import save_safetensors
from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL

TOL = 1e-4


def _diffusers_vae(**over):
    torch.manual_seed(0)
    kw = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1)
    kw.update(over)
    return DiffusersAE(**kw).eval()


def _diffusers_from_config(cfg):
    kw = {k: v for k, v in vae_config_to_diffusers(cfg).items() if not k.startswith("_")}
    return DiffusersAE(**kw).eval()


def _randomize(module):
    """Give GroupNorm affine params non-trivial values so a mapping mistake there cannot hide."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _max_diff(ours: AutoencoderKL, theirs, x, z):
    with torch.no_grad():
        a, b = theirs.encode(x).latent_dist, ours.encode(x)
        dec = (theirs.decode(z).sample - ours.decode(z)).abs().max()
        return max((a.mean - b.mean).abs().max(), (a.logvar - b.logvar).abs().max(), dec).item()


@pytest.mark.parametrize("over", [{}, {"layers_per_block": 2, "block_out_channels": (16, 32, 32), "latent_channels": 3,
                                       "down_block_types": ("DownEncoderBlock2D",) * 3,
                                       "up_block_types": ("UpDecoderBlock2D",) * 3, "scaling_factor": 0.13}])
def test_t2i_loads_diffusers_and_diffusers_loads_t2i(over):
    ref = _diffusers_vae(**over)
    _randomize(ref)
    cfg = vae_config_from_diffusers(dict(ref.config))
    assert cfg.scaling_factor == ref.config.scaling_factor
    ours = AutoencoderKL(cfg).eval()
    ours.load_state_dict(from_diffusers(ref.state_dict(), cfg))
    x = torch.randn(2, 3, 16, 16)
    z = torch.randn(2, cfg.latent_channels, 16 // cfg.downscale, 16 // cfg.downscale)
    d1 = _max_diff(ours, ref, x, z)
    assert d1 <= TOL

    torch.manual_seed(5)
    fresh = AutoencoderKL(cfg).eval()
    _randomize(fresh)
    theirs = _diffusers_from_config(cfg)
    theirs.load_state_dict(to_diffusers(fresh.state_dict(), cfg))  # strict: every key present, none extra
    assert _max_diff(fresh, theirs, x, z) <= TOL
    assert vae_config_from_diffusers(vae_config_to_diffusers(cfg)) == cfg


def test_no_mid_attention_no_quant_conv_variant():
    ref = _diffusers_vae(mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False)
    cfg = vae_config_from_diffusers(dict(ref.config))
    ours = AutoencoderKL(cfg).eval()
    ours.load_state_dict(from_diffusers(ref.state_dict(), cfg))
    assert _max_diff(ours, ref, torch.randn(1, 3, 8, 8), torch.randn(1, 4, 4, 4)) <= TOL


def test_ldm_single_file_layout_both_ways():
    ref = _diffusers_vae()
    _randomize(ref)
    cfg = vae_config_from_diffusers(dict(ref.config))
    torch.manual_seed(3)
    ours = AutoencoderKL(cfg).eval()
    _randomize(ours)
    ldm = to_ldm(ours.state_dict(), cfg)
    # the original layout stores mid attention as 1x1 convs
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert "decoder.up.1.upsample.conv.weight" in ldm and "encoder.down.0.downsample.conv.weight" in ldm
    assert vae_config_from_ldm(ldm, norm_groups=8) == cfg
    # diffusers' own single-file converter reads our export...
    theirs = _diffusers_from_config(cfg)
    theirs.load_state_dict(convert_ldm_vae_checkpoint({PREFIX + k: v for k, v in ldm.items()}, dict(ref.config)))
    x, z = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 8, 8)
    assert _max_diff(ours, theirs, x, z) <= TOL
    # ...and we read the layout back exactly
    back = AutoencoderKL(cfg).eval()
    back.load_state_dict(from_ldm(ldm, cfg))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())


def test_mismatched_checkpoints_name_the_tensor():
    ref = _diffusers_vae()
    cfg = vae_config_from_diffusers(dict(ref.config))
    state = dict(ref.state_dict())
    state["decoder.conv_out.weight"] = torch.zeros(3, 16, 3, 3)
    with pytest.raises(ValueError, match=r"'decoder\.conv_out\.weight' \(3, 16, 3, 3\).*expects \(3, 32, 3, 3\)"):
        from_diffusers(state, cfg)
    state = dict(ref.state_dict())
    del state["encoder.mid_block.attentions.0.to_k.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        from_diffusers(state, cfg)
    assert "to_k.bias" in str(e.value) and "encoder.extra.weight" in str(e.value)
    with pytest.raises(ValueError, match="unsupported diffusers VAE blocks"):
        vae_config_from_diffusers({**dict(ref.config), "down_block_types": ["AttnDownEncoderBlock2D"] * 2})


def test_folder_round_trip_with_diffusers_from_pretrained(tmp_path):
    ref = _diffusers_vae()
    _randomize(ref)
    ref.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    ours = load_diffusers_vae(tmp_path / "theirs").eval()
    x, z = torch.randn(1, 3, 16, 16), torch.randn(1, 4, 8, 8)
    assert _max_diff(ours, ref, x, z) <= TOL
    save_diffusers_vae(ours, tmp_path / "mine")
    again = DiffusersAE.from_pretrained(tmp_path / "mine").eval()
    assert _max_diff(ours, again, x, z) <= TOL
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["block_out_channels"] == [32, 64]


def test_folder_with_pickle_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(vae_config_to_diffusers(vae_config_from_diffusers(
        dict(_diffusers_vae().config)))))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="pickle"):
        load_diffusers_vae(tmp_path)
    save_safetensors({"a": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="missing tensors"):
        load_diffusers_vae(tmp_path)


@pytest.mark.slow
def test_stable_diffusion_sized_vae_parity():
    """SD 1.x/2.x VAE shapes (random weights): both directions within 1e-4 at a 64x64 image."""
    ref = DiffusersAE(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4).eval()
    cfg = vae_config_from_diffusers(dict(ref.config))
    assert cfg == AutoencoderConfig()  # the SD defaults
    ours = AutoencoderKL(cfg).eval()
    ours.load_state_dict(from_diffusers(ref.state_dict(), cfg))
    x, z = torch.randn(1, 3, 64, 64), torch.randn(1, 4, 8, 8)
    assert _max_diff(ours, ref, x, z) <= TOL
    theirs = _diffusers_from_config(cfg)
    theirs.load_state_dict(convert_ldm_vae_checkpoint({PREFIX + k: v for k, v in to_ldm(ours.state_dict(), cfg).items()},
                                                      dict(ref.config)))
    assert _max_diff(ours, theirs, x, z) <= TOL
