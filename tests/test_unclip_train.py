"""unCLIP's prior stage (Ramesh et al. 2022, sec. 2.2) through the one Trainer: over a tiny trained CLIP run's
embeddings, a few steps, checkpointed with its embedding statistics; misfit recipes are one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2i.train import RecipeError, Trainer, load_recipe, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(progress=False, log=lambda m: None)
SMALL = ["train.batch_size=4", "train.checkpoint_every=3", "train.log_every=1", "data.length=12"]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    Trainer(load_recipe("tiny_clip", SMALL + ["train.steps=2", "clip.num_samples=2"]), out, **QUIET).run()
    return out


def test_prior_trains_over_a_clip_run(clip_run, tmp_path):
    recipe = load_recipe("tiny_prior", SMALL + ["train.steps=3", f"prior.clip_run={clip_run}", "prior.stats_examples=8",
                                                "prior.num_samples=3", "prior.sample_steps=2"])
    result = Trainer(recipe, tmp_path / "prior", **QUIET).run()
    assert result.step == 3 and math.isfinite(result.loss)
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt.config["stage"] == "prior" and {k.split(".")[0] for k in ckpt.model} == {"prior"}
    std = ckpt.model["prior.embed_std"]
    assert std.shape == (1, 32) and not torch.allclose(std, torch.ones_like(std))  # measured, not the default
    logs = [json.loads(line) for line in (tmp_path / "prior" / "metrics.jsonl").open()]
    assert len(logs) == 3 and all(math.isfinite(r["loss"]) for r in logs)
    assert (tmp_path / "prior" / "samples" / "step_00000003.png").is_file()


def test_prior_recipe_misfits_are_one_line(tmp_path):
    with pytest.raises(RecipeError, match="set by the CLIP"):
        load_recipe("tiny_prior", ["prior.net.dim=8"])
    with pytest.raises(RecipeError, match="text_drop"):
        load_recipe("tiny_prior", ["prior.text_drop=1.5"])
    recipe = load_recipe("tiny_prior", [f"prior.clip_run={tmp_path / 'none'}"])
    with pytest.raises(RecipeError, match="no complete checkpoint"):
        Trainer(recipe, tmp_path / "prior", **QUIET).run()


def test_decoder_trains_over_a_clip_run(clip_run, tmp_path):
    recipe = load_recipe("tiny_unclip_decoder", SMALL + ["train.steps=3", f"unclip_decoder.clip_run={clip_run}",
                                                         "unclip_decoder.num_samples=2",
                                                         "unclip_decoder.sample_steps=2"])
    result = Trainer(recipe, tmp_path / "decoder", **QUIET).run()
    assert result.step == 3 and math.isfinite(result.loss)
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt.config["stage"] == "unclip_decoder" and "decoder.null" in ckpt.model
    assert (tmp_path / "decoder" / "samples" / "step_00000003.png").is_file()
    with pytest.raises(RecipeError, match="set by the CLIP"):
        load_recipe("tiny_unclip_decoder", ["unclip_decoder.net.embed_dim=8"])
