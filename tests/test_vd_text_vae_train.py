"""[vd] The text VAE's training stage through the one Trainer (a tiny recipe, a few steps, the tokenizer saved
beside the weights), its recipe checks, and the exact-match reconstruction measure of t2i.eval.caption."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2i.encoders.tokenizer import WordTokenizer
from t2i.eval.caption import held_out_captions, reconstruction_accuracy
from t2i.train import RecipeError, Trainer, load_recipe, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(progress=False, log=lambda m: None)
SMALL = ["train.batch_size=4", "train.checkpoint_every=3", "train.log_every=1", "data.length=12",
         "text_vae.num_samples=2"]


def test_text_vae_trains_a_few_steps(tmp_path):
    result = Trainer(load_recipe("tiny_text_vae", SMALL + ["train.steps=3"]), tmp_path / "run", **QUIET).run()
    assert result.step == 3 and math.isfinite(result.loss)
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt.config["stage"] == "text_vae" and {k.split(".")[0] for k in ckpt.model} == {"text_vae"}
    assert WordTokenizer.from_json(ckpt.extra("tokenizer.json").decode()).vocab == WordTokenizer.for_shapes().vocab
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(logs) == 3 and all(math.isfinite(r["rec"]) and r["kl"] >= 0 for r in logs)
    assert (tmp_path / "run" / "samples" / "step_00000003.png").is_file()


def test_recipe_misfits_are_one_line():
    with pytest.raises(RecipeError, match="set by the tokenizer"):
        load_recipe("tiny_text_vae", ["text_vae.net.vocab_size=8"])
    with pytest.raises(RecipeError, match="beta"):
        load_recipe("tiny_text_vae", ["text_vae.beta=-1"])


class _Echo(torch.nn.Module):
    """A 'VAE' whose latent is the caption's ids: reconstruction is exact unless a word is dropped."""

    def __init__(self, drop_last: bool):
        super().__init__()
        self.config, self.w, self.drop = type("C", (), {"max_length": 40})(), torch.nn.Parameter(torch.zeros(1)), drop_last

    def encode(self, ids, mask):
        return type("P", (), {"mean": ids.float()})()

    def generate(self, z):
        ids = z.long()
        if self.drop:
            ids[:, 0] = 2  # <eos> first: an empty caption
        return ids


def test_reconstruction_accuracy_counts_exact_matches():
    tok = WordTokenizer.for_shapes()
    captions = held_out_captions(20)
    assert len(set(captions)) > 5 and held_out_captions(20) == captions  # deterministic, varied
    assert reconstruction_accuracy(_Echo(False), tok, captions, batch_size=7) == 1.0
    assert reconstruction_accuracy(_Echo(True), tok, captions) == 0.0


def test_cpu_recipe_loads():
    r = load_recipe("shapes_text_vae")
    assert r.stage == "text_vae" and r.options.net["latent_dim"] == 32 and r.options.net["max_length"] >= 37
