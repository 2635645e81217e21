"""The T5 encoder loader (Imagen's frozen text encoder): parity with a tiny random transformers T5EncoderModel
built offline (T5 1.0 ReLU and 1.1 gated GELU), both key-map directions, and a folder as the 't5' text encoder."""

from __future__ import annotations

import json

import pytest
import torch

from t2i.encoders.registry import TextConfig, build_text_encoder, encode_prompts
from t2i.encoders.t5 import T5TextConfig
from t2i.io.t5 import from_transformers, load_transformers_t5, to_transformers
from t2i.nn.t5 import T5Config, T5Encoder, relative_position_bucket

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_hf_t5(feed_forward: str = "relu"):
    """A random 2-layer, 32-wide transformers T5EncoderModel (d_kv * heads != d_model), built offline."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=40, d_model=32, d_kv=6, d_ff=48, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                feed_forward_proj=feed_forward, dropout_rate=0.0)
    model = transformers.T5EncoderModel(cfg).eval()
    with torch.no_grad():  # T5's init leaves the norms at 1: make every tensor count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return transformers, cfg, model


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_t5_matches_transformers_both_ways(feed_forward):
    transformers, hf_cfg, hf = tiny_hf_t5(feed_forward)
    cfg = T5Config.from_hf_config(hf_cfg.to_dict())
    assert T5Config.from_dict(cfg.to_dict()) == cfg and cfg.feed_forward == feed_forward
    ours = T5Encoder(cfg).eval()
    ours.load_state_dict(from_transformers(hf.state_dict(), cfg))  # strict
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (3, 30), generator=g)  # longer than max_distance: the log buckets are used
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[1, 17:] = mask[2, 4:] = False  # right padding
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        out = ours(ids, mask)
        full = hf(input_ids=ids).last_hidden_state
    err = (out - ref).abs().max().item()
    print(f"T5 ({feed_forward}) parity: max |t2i - transformers| = {err:.2e}")
    assert err <= 1e-5
    assert (ours(ids) - full).abs().max() <= 1e-5
    back = transformers.T5EncoderModel(hf_cfg).eval()
    back.load_state_dict(to_transformers(ours.state_dict(), cfg), strict=True)
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask.long()).last_hidden_state - ref).abs().max() <= 1e-5


def test_relative_buckets_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-200, 201)[None]
    theirs = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(relative_position_bucket(rel, 32, 128), theirs)


def test_a_misfit_checkpoint_is_named():
    _, hf_cfg, hf = tiny_hf_t5()
    cfg = T5Config.from_hf_config(hf_cfg.to_dict())
    state = dict(hf.state_dict())
    state["encoder.block.1.layer.1.DenseReluDense.wi.weight"] = torch.zeros(49, 32)
    with pytest.raises(ValueError, match=r"'encoder.block.1.layer.1.DenseReluDense.wi.weight' \(49, 32\).*\(48, 32\)"):
        from_transformers(state, cfg)
    with pytest.raises(ValueError, match="unsupported T5 feed_forward_proj 'gated-silu'"):
        T5Config.from_hf_config({"feed_forward_proj": "gated-silu"})


def _word_tokenizer_json(path, words):
    """A tokenizers WordLevel tokenizer.json that appends </s> (id 1) as T5's does; pad is id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path))


def test_a_t5_folder_is_the_t5_text_encoder(tmp_path):
    pytest.importorskip("tokenizers")
    _, hf_cfg, hf = tiny_hf_t5("gated-gelu")
    hf.save_pretrained(tmp_path)
    _word_tokenizer_json(tmp_path / "tokenizer.json", ["a", "red", "circle", "blue", "star"])
    assert (tmp_path / "model.safetensors").is_file() and json.loads((tmp_path / "config.json").read_text())
    text = TextConfig(kind="t5", encoder={"folder": str(tmp_path), "max_length": 6}, pooled=True)
    enc = build_text_encoder(text)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    pooled, tokens, mask = enc(["a red circle", "a blue star a red circle"])  # the second is cut, </s> kept
    ids, _ = enc.tokenizer(["a red circle", "a blue star a red circle"])
    assert ids.tolist() == [[3, 4, 5, 1, 0, 0], [3, 6, 7, 3, 4, 1]]
    assert mask.tolist()[0] == [True] * 4 + [False] * 2 and tokens.shape == (2, 6, 32) and pooled.shape == (2, 32)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert (tokens - ref).abs().max() <= 1e-5
    assert torch.allclose(pooled[0], tokens[0, :4].mean(0), atol=1e-6)
    assert set(encode_prompts(text, enc, ["a red"])) == {"context", "context_mask", "pooled"}
    assert enc.prompt_fit("a blue star a red circle") == (7, 6, [])
    assert json.loads(enc.tokenizer.to_json())["model"]["type"] == "WordLevel"
    assert load_transformers_t5(tmp_path).config == T5Config.from_hf_config(hf_cfg.to_dict())
    with pytest.raises(ValueError, match="needs its checkpoint folder"):
        build_text_encoder(TextConfig(kind="t5"))
    with pytest.raises(ValueError, match="max_length"):
        T5TextConfig(max_length=1)
