"""CLIP text compatibility: transformers CLIPTextModel(+WithProjection), SD 1.x and SD 2.x single-file layouts."""

import json

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from t2i.io.clip_text import (
    clip_config_from_transformers,
    clip_config_to_transformers,
    from_transformers,
    load_transformers_clip,
    save_transformers_clip,
    to_transformers,
)
from t2i.io.ldm_clip import (
    OPENCLIP_PREFIX,
    PREFIX,
    clip_config_from_ldm,
    from_ldm,
    from_openclip,
    openclip_config_from_ldm,
    to_ldm,
    to_openclip,
)
from t2i.nn.transformer import TextTransformer

TOL = 1e-4
EOS = 999


def _hf_config(**over):
    kw = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=77, eos_token_id=EOS, bos_token_id=998, pad_token_id=EOS, projection_dim=16)
    kw.update(over)
    return CLIPTextConfig(**kw)


def _randomize_norms(module):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _batch():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 900, (3, 12), generator=g)
    ids[:, 0] = 998
    ids[0, 6:] = EOS  # EOS then EOS-padding
    ids[1, -1] = EOS
    ids[2, 4:] = EOS
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[2, 5:] = False
    return ids, mask


def _compare(ours: TextTransformer, theirs, ids, mask, projected=False):
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask)
        pooled, tokens, _ = ours(ids, mask)
    ref_pooled = out.text_embeds if projected else out.pooler_output
    return max((out.last_hidden_state - tokens).abs().max().item(), (ref_pooled - pooled).abs().max().item())


@pytest.mark.parametrize("act,eos", [("quick_gelu", EOS), ("gelu", 2), ("gelu_pytorch_tanh", EOS)])
def test_t2i_loads_clip_text_model_and_back(act, eos):
    torch.manual_seed(0)
    hf = _hf_config(hidden_act=act, eos_token_id=eos)
    ref = CLIPTextModel(hf).eval()
    _randomize_norms(ref)
    cfg = clip_config_from_transformers(hf.to_dict())
    assert cfg.pool == ("argmax" if eos == 2 else "eos")
    ours = TextTransformer(cfg).eval()
    ours.load_state_dict(from_transformers(ref.state_dict(), cfg))
    ids, mask = _batch()
    assert _compare(ours, ref, ids, mask) <= TOL
    assert _compare(ours, ref, ids, None) <= TOL

    torch.manual_seed(4)
    fresh = TextTransformer(cfg).eval()
    _randomize_norms(fresh)
    theirs = CLIPTextModel(CLIPTextConfig(**clip_config_to_transformers(cfg))).eval()
    theirs.load_state_dict(to_transformers(fresh.state_dict(), cfg))  # strict
    assert _compare(fresh, theirs, ids, mask) <= TOL
    assert clip_config_from_transformers(clip_config_to_transformers(cfg)) == cfg


def test_with_projection_both_ways():
    torch.manual_seed(0)
    hf = _hf_config()
    ref = CLIPTextModelWithProjection(hf).eval()
    cfg = clip_config_from_transformers({**hf.to_dict(), "architectures": ["CLIPTextModelWithProjection"]})
    assert cfg.proj_dim == 16
    ours = TextTransformer(cfg).eval()
    ours.load_state_dict(from_transformers(ref.state_dict(), cfg))
    ids, mask = _batch()
    assert _compare(ours, ref, ids, mask, projected=True) <= TOL
    theirs = CLIPTextModelWithProjection(CLIPTextConfig(**clip_config_to_transformers(cfg))).eval()
    theirs.load_state_dict(to_transformers(ours.state_dict(), cfg))
    assert _compare(ours, theirs, ids, mask, projected=True) <= TOL


def test_folder_round_trip_with_from_pretrained(tmp_path):
    torch.manual_seed(0)
    ref = CLIPTextModel(_hf_config()).eval()
    ref.save_pretrained(tmp_path / "theirs")
    ours = load_transformers_clip(tmp_path / "theirs").eval()
    ids, mask = _batch()
    assert _compare(ours, ref, ids, mask) <= TOL
    save_transformers_clip(ours, tmp_path / "mine")
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    again = CLIPTextModel.from_pretrained(tmp_path / "mine").eval()
    assert _compare(ours, again, ids, mask) <= TOL


def test_sd1_single_file_layout_both_ways():
    torch.manual_seed(0)
    ref = CLIPTextModel(_hf_config(eos_token_id=2)).eval()
    _randomize_norms(ref)
    single = {f"{PREFIX}text_model.{k}": v for k, v in ref.state_dict().items()}
    single[f"{PREFIX}text_model.embeddings.position_ids"] = torch.arange(77)[None]
    stripped = {k[len(PREFIX):]: v for k, v in single.items()}
    cfg = clip_config_from_ldm(stripped, heads=4)
    assert (cfg.vocab_size, cfg.width, cfg.transformer.layers, cfg.transformer.hidden) == (1000, 32, 2, 37)
    ours = TextTransformer(cfg).eval()
    ours.load_state_dict(from_ldm(stripped, cfg))
    ids, mask = _batch()
    assert _compare(ours, ref, ids, mask) <= TOL
    # diffusers' own single-file reader accepts our export
    exported = {PREFIX + k: v for k, v in to_ldm(ours.state_dict(), cfg).items()}
    assert all(k.startswith(PREFIX + "text_model.") for k in exported)
    theirs_state = convert_ldm_clip_checkpoint(exported)
    theirs = CLIPTextModel(_hf_config(eos_token_id=2)).eval()
    theirs.load_state_dict({k.removeprefix("text_model."): v for k, v in theirs_state.items()})
    assert _compare(ours, theirs, ids, mask) <= TOL


def _openclip_state(width=32, layers=3, heads=4, vocab=1000, ctx=77):
    """A random SD 2.x-style OpenCLIP text tower in its own names (fused in_proj)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    s = {"token_embedding.weight": r(vocab, width), "positional_embedding": r(ctx, width),
         "ln_final.weight": 1 + r(width), "ln_final.bias": r(width), "text_projection": r(width, width),
         "logit_scale": torch.tensor(4.6)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        s.update({p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width),
                  p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width),
                  p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width),
                  p + "ln_2.weight": 1 + r(width), p + "ln_2.bias": r(width),
                  p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width),
                  p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width)})
    return s


def test_sd2_openclip_layout_matches_diffusers_conversion():
    oc = _openclip_state()
    cfg = openclip_config_from_ldm(oc, heads=4)
    assert cfg.transformer.layers == 2 and cfg.transformer.activation == "gelu" and cfg.pool == "argmax"
    ours = TextTransformer(cfg).eval()
    ours.load_state_dict(from_openclip(oc, cfg))
    # diffusers' converter, into a 2-layer (penultimate) CLIPTextModel as diffusers builds for SD 2
    hf = _hf_config(hidden_act="gelu", intermediate_size=128, eos_token_id=2)
    theirs = CLIPTextModel(hf).eval()
    conv = convert_open_clip_checkpoint(theirs, {OPENCLIP_PREFIX + k: v for k, v in oc.items()})
    conv = {k.removeprefix("text_model."): v for k, v in conv.items()
            if k != "text_projection.weight" and ".layers.2." not in k}
    theirs.load_state_dict(conv)
    ids, mask = _batch()
    assert _compare(ours, theirs, ids, None) <= TOL
    back = to_openclip(ours.state_dict(), cfg)
    assert all(torch.equal(back[k], oc[k]) for k in back)
    assert "transformer.resblocks.2.ln_1.weight" not in back


def test_misfit_names_the_tensor():
    torch.manual_seed(0)
    ref = CLIPTextModel(_hf_config()).eval()
    cfg = clip_config_from_transformers(_hf_config().to_dict())
    state = dict(ref.state_dict())
    state["encoder.layers.1.self_attn.k_proj.weight"] = torch.zeros(32, 16)
    with pytest.raises(ValueError, match=r"k_proj\.weight' \(32, 16\).*cannot be fused|k_proj.weight"):
        from_transformers(state, cfg)
    state = dict(ref.state_dict())
    state["embeddings.position_embedding.weight"] = torch.zeros(64, 32)
    with pytest.raises(ValueError, match=r"'embeddings\.position_embedding\.weight' \(64, 32\).*expects \(77, 32\)"):
        from_transformers(state, cfg)
    with pytest.raises(ValueError, match="hidden_act"):
        clip_config_from_transformers({"hidden_act": "relu"})


@pytest.mark.slow
def test_sd1_sized_clip_text_parity():
    """OpenAI CLIP ViT-L/14 text tower shapes (SD 1.x, random weights), 12 heads inferred from width."""
    torch.manual_seed(0)
    hf = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        eos_token_id=2, bos_token_id=0, pad_token_id=1)
    ref = CLIPTextModel(hf).eval()
    stripped = {f"text_model.{k}": v for k, v in ref.state_dict().items()}
    cfg = clip_config_from_ldm(stripped)
    assert cfg.transformer.heads == 12 and cfg.vocab_size == 49408
    ours = TextTransformer(cfg).eval()
    ours.load_state_dict(from_ldm(stripped, cfg))
    ids = torch.full((2, 77), 49407)
    ids[:, 0] = 49406
    ids[0, 1:6] = torch.tensor([320, 1125, 539, 320, 2368])
    ids[1, 1:3] = torch.tensor([1929, 267])
    assert _compare(ours, ref, ids, None) <= TOL
