"""Original single-file Stable Diffusion checkpoints: t2i writes the real layout (diffusers' own
converters read it) and reads it back; pickle files and misfit tensors are refused by name."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL as DiffusersVAE  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from t2i.io import clip_text, diffusers_vae  # noqa: E402
from t2i.io.diffusers_unet import from_diffusers, unet_config_from_diffusers  # noqa: E402
from t2i.io.sd_single_file import (  # noqa: E402
    UNET_PREFIX,
    StableDiffusionWeights,
    load_sd_single_file,
    save_sd_single_file,
    sd_single_file_state,
    unet_config_from_ldm,
)
from t2i.io.weights import load_safetensors, save_safetensors  # noqa: E402
from t2i.nn.autoencoder import AutoencoderKL  # noqa: E402
from t2i.nn.transformer import TextTransformer  # noqa: E402
from t2i.nn.unet import UNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4


def _noise(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module.eval()


def _unet(**over) -> UNet2DConditionModel:
    kw = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)  # SD files imply 32 groups
    kw.update(over)
    torch.manual_seed(0)
    return _noise(UNet2DConditionModel(**kw))


def _parts():
    """Tiny random diffusers UNet / VAE and transformers CLIP text model, and t2i copies of each."""
    unet = _unet()
    torch.manual_seed(1)
    vae = DiffusersVAE(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
                       layers_per_block=1)
    vae = _noise(vae, 0.05)
    torch.manual_seed(2)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0,
                                        eos_token_id=2, pad_token_id=1)).eval()
    ucfg = unet_config_from_diffusers(dict(unet.config))
    ours_unet = UNet(ucfg).eval()
    ours_unet.load_state_dict(from_diffusers(unet.state_dict(), ucfg))
    vcfg = diffusers_vae.vae_config_from_diffusers(dict(vae.config))
    ours_vae = AutoencoderKL(vcfg).eval()
    ours_vae.load_state_dict(diffusers_vae.from_diffusers(vae.state_dict(), vcfg))
    tcfg = clip_text.clip_config_from_transformers(clip.config.to_dict())
    ours_clip = TextTransformer(tcfg).eval()
    ours_clip.load_state_dict(clip_text.from_transformers(clip.state_dict(), tcfg))
    return (unet, vae, clip), StableDiffusionWeights(unet=ours_unet, vae=ours_vae, text_encoder=ours_clip)


def _unet_inputs():
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 600.0]), torch.randn(2, 6, 32, generator=g)


def _unet_diff(theirs, ours, pooled=None) -> float:
    x, t, ctx = _unet_inputs()
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=ctx, class_labels=pooled).sample
        assert ref.abs().max() > 0.1
        return (ours(x, t, context=ctx, pooled=pooled) - ref).abs().max().item()


def test_sd1_file_is_read_by_diffusers_converters_and_by_t2i(tmp_path):
    (unet, vae, clip), weights = _parts()
    state = sd_single_file_state(weights)
    state["alphas_cumprod"] = torch.linspace(1, 0, 10)  # schedule buffers of real files: not weights
    path = save_safetensors(state, tmp_path / "sd1.safetensors")
    ckpt = load_safetensors(path)

    # theirs reads ours: diffusers' own single-file converters, strict loads into fresh models
    fresh_unet = UNet2DConditionModel(**unet.config).eval()
    fresh_unet.load_state_dict(convert_ldm_unet_checkpoint(ckpt, dict(unet.config)))
    assert _unet_diff(fresh_unet, weights.unet) <= TOL
    fresh_vae = DiffusersVAE(**vae.config).eval()
    fresh_vae.load_state_dict(convert_ldm_vae_checkpoint(ckpt, dict(vae.config)))
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (fresh_vae.decode(z).sample - weights.vae.decode(z)).abs().max() <= TOL
    fresh_clip = CLIPTextModel(clip.config).eval()
    # transformers 5 names CLIPTextModel's tensors without the `text_model.` that files carry
    fresh_clip.load_state_dict({k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ckpt).items()})
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (fresh_clip(ids).last_hidden_state - weights.text_encoder(ids)[1]).abs().max() <= TOL

    # ours reads it back: configs inferred from shapes, same outputs as the diffusers originals
    back = load_sd_single_file(path, num_heads=8, text_heads=4)
    assert back.ignored == ["alphas_cumprod"] and not back.linear_projection and not back.openclip
    assert back.unet.config == weights.unet.config
    assert _unet_diff(unet, back.unet.eval()) <= TOL
    with torch.no_grad():
        assert (vae.decode(z).sample - back.vae.eval().decode(z)).abs().max() <= TOL
        assert (clip(ids).last_hidden_state - back.text_encoder.eval()(ids)[1]).abs().max() <= TOL
    # and writing it again reproduces the file tensor for tensor
    again = sd_single_file_state(back)
    assert again.keys() == state.keys() - {"alphas_cumprod"}
    assert all(torch.equal(again[k], state[k]) for k in again)


@pytest.mark.parametrize("over", [
    dict(use_linear_projection=True, attention_head_dim=(2, 4)),  # SD 2.x: Linear projections, heads per level
    dict(resnet_time_scale_shift="scale_shift", class_embed_type="projection",  # unCLIP-style label_emb
         projection_class_embeddings_input_dim=12, transformer_layers_per_block=2, attention_head_dim=4),
])
def test_unet_only_variants_round_trip_through_the_original_layout(tmp_path, over):
    unet = _unet(**over)
    cfg = unet_config_from_diffusers(dict(unet.config))
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(unet.state_dict(), cfg))
    linear = bool(unet.config.use_linear_projection)
    path = save_sd_single_file(StableDiffusionWeights(unet=ours, linear_projection=linear), tmp_path / "u.safetensors")
    ckpt = load_safetensors(path)
    fresh = UNet2DConditionModel(**unet.config).eval()
    fresh.load_state_dict(convert_ldm_unet_checkpoint(ckpt, dict(unet.config)))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in unet.state_dict().items())
    heads = cfg.num_heads
    back = load_sd_single_file(path, num_heads=heads, norm_groups=32)
    assert back.linear_projection == linear and back.vae is None and back.text_encoder is None
    assert back.unet.config == cfg
    pooled = torch.randn(2, cfg.pooled_dim) if cfg.pooled_dim else None
    assert _unet_diff(unet, back.unet.eval(), pooled) <= TOL


def test_head_defaults_follow_the_original_sd_configs():
    unet = _unet(block_out_channels=(64, 128), attention_head_dim=8)
    cfg = unet_config_from_diffusers(dict(unet.config))
    ours = UNet(cfg)
    ours.load_state_dict(from_diffusers(unet.state_dict(), cfg))
    for linear, expect in [(False, (8, 8)), (True, (1, 64))]:
        ldm = {k[len(UNET_PREFIX):]: v for k, v in sd_single_file_state(
            StableDiffusionWeights(unet=ours, linear_projection=linear)).items()}
        assert unet_config_from_ldm(ldm).heads_at(0) == expect


def test_pickle_checkpoints_are_refused_by_name(tmp_path):
    path = tmp_path / "v1-5-pruned.ckpt"
    path.write_bytes(b"PK\x03\x04 a zip of pickles")
    with pytest.raises(ValueError, match=r"v1-5-pruned\.ckpt.*pickle"):
        load_sd_single_file(path)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(b"\x80\x04\x95 a pickle stream")
    with pytest.raises(ValueError, match=r"model\.safetensors.*pickle"):
        load_sd_single_file(disguised)


def test_misfit_tensor_is_named_with_its_expected_shape(tmp_path):
    _, weights = _parts()
    state = sd_single_file_state(StableDiffusionWeights(unet=weights.unet))
    key = UNET_PREFIX + "input_blocks.1.0.emb_layers.1.weight"
    state[key] = torch.zeros(32, 99)
    path = save_safetensors(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"input_blocks\.1\.0\.emb_layers\.1\.weight' \(32, 99\).*expects \(32, 128\)"):
        load_sd_single_file(path, num_heads=8)
    path = save_safetensors({"first_stage_model.x": torch.zeros(1)}, tmp_path / "vae_only.safetensors")
    with pytest.raises(ValueError, match="not an original Stable Diffusion checkpoint"):
        load_sd_single_file(path)
