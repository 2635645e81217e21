"""GLIDE's gradient guidances (Nichol et al. 2021, sec. 2.3-2.4): the noise-aware classifier (ADM's down-path
trunk + attention pool), ShapesWorld's (colour, shape) labels from metadata, captions and prompts, the classifier
stage through the one Trainer (exact resume), a tiny classifier overfitting a batch, and the log-prob functions
that `GradientGuidance` takes: direction, scale 0, and gradients by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from t2i.encoders.labels import (NUM_LABELS, PAIR_INDEX, labels_from_caption, labels_from_metadata, labels_from_prompt,
                             labels_from_prompts, mentions)
from t2i.data.shapes import ShapesWorld
from t2i.diffusion import (DiscreteDenoiser, DiscreteSchedule, GradientGuidance, TimestepNet, any_of_log_prob,
                           classifier_log_prob, clip_log_prob)
from t2i.nn.classifier import ClassifierConfig, NoisyClassifier
from t2i.train import RecipeError, Trainer, load_recipe, read_checkpoint
from t2i.train.stages.classifier import ClassifierStage

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = ClassifierConfig(image_size=16, block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,), head_dim=16,
                        norm_groups=8)


def test_classifier_shapes_config_and_timestep():
    assert ClassifierConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    assert TINY.pool_size == 8 and ClassifierConfig().pool_size == 8  # ADM pools at 8 x 8
    with pytest.raises(ValueError, match="unknown fields"):
        ClassifierConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="does not halve"):
        ClassifierConfig(image_size=18, block_channels=(16, 32, 32), attention_levels=(), norm_groups=8, head_dim=16)
    torch.manual_seed(0)
    net = NoisyClassifier(TINY)
    assert {k.split(".")[0] for k in net.state_dict()} == {"time_embed", "conv_in", "down", "mid", "norm", "pool"}
    for m in net.modules():  # fresh ResBlocks are their skip path (zero conv2): wake them so t matters
        if hasattr(m, "conv2"):
            torch.nn.init.normal_(m.conv2.weight, std=0.1)
    x = torch.randn(2, 3, 16, 16)
    a, b = net(x, torch.zeros(2)), net(x, torch.full((2,), 700.0))
    assert a.shape == (2, NUM_LABELS) and (a - b).abs().max() > 1e-4
    assert torch.allclose(net(x, 0.0), a)  # a scalar t is broadcast
    with pytest.raises(ValueError, match=r"x must be \(B, 3, 16, 16\)"):
        net(torch.randn(2, 3, 32, 32), torch.zeros(2))


def test_labels_from_metadata_captions_and_prompts():
    ds = ShapesWorld(size=16)
    masked = 0
    for i in range(300):  # every caption of every image: named pairs present, others absent, colour-less unknown
        scene, captions, _ = ds.scene_and_captions(i)
        truth = labels_from_metadata({"scene": scene.to_dict()})
        assert truth.sum() == len({(o.color, o.shape) for o in scene.objects})
        for c in captions:
            y, known = labels_from_caption(c)
            assert torch.equal(y[known], truth[known]), c
            masked += int(not known.all())
    assert masked > 0  # "three stars" captions occur
    assert mentions("a star that is brown on a black background") == [("brown", "star")]
    assert mentions("a red circle to the left of two blue crosses") == [("red", "circle"), ("blue", "cross")]
    g = labels_from_prompt("two circles and a large green square")
    assert g.shape == (2, NUM_LABELS) and g[0].sum() == 8 and g[1].nonzero().flatten().tolist() == [
        PAIR_INDEX[("green", "square")]]
    padded = labels_from_prompts(["a red star", "a blue cross and a pink circle", "on a gray background"])
    assert padded.shape == (3, 2, NUM_LABELS) and padded.any(-1).sum(-1).tolist() == [1, 2, 0]


def test_any_of_log_prob_by_hand():
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.0], [-0.5, 0.7, -2.0, 1.5]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    groups = torch.tensor([[[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]], dtype=torch.bool)  # (1, 3, 4): pad last
    hand = torch.log(p[:, 0]) + torch.log(1 - (1 - p[:, 1]) * (1 - p[:, 2]))
    assert torch.allclose(any_of_log_prob(logits, groups), hand)
    assert torch.allclose(any_of_log_prob(logits, groups[:, :1]), F.logsigmoid(logits[:, 0]))


def _toy_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
    """The exact denoiser of N(0, I) data in VE form: x0_hat = x / (1 + sigma^2)."""
    return x / (1 + sigma[:, None, None, None] ** 2)


def test_classifier_guidance_direction_and_scale_zero():
    torch.manual_seed(0)
    w, bias = torch.randn(NUM_LABELS, 3 * 4 * 4) * 0.1, torch.randn(NUM_LABELS) * 0.1
    linear = lambda x, sigma: x.flatten(1) @ w.t() + bias  # (B, 40), a fixed linear "classifier"
    groups = labels_from_prompts(["a red circle and a blue star", "two crosses"])  # (2, 2, 40)
    log_prob = classifier_log_prob(linear, groups)
    x, sigma = torch.randn(2, 3, 4, 4) * 2, torch.tensor([1.5, 0.8])
    x0 = _toy_denoiser(x, sigma)
    assert torch.equal(GradientGuidance(_toy_denoiser, log_prob, 0.0)(x, sigma), x0)
    guided = GradientGuidance(_toy_denoiser, log_prob, 0.5)(x, sigma)
    # the red-circle term by hand: d/dx log sigmoid(w_k x + b_k) = (1 - sigmoid(l_k)) w_k
    k = PAIR_INDEX[("red", "circle")]
    one = classifier_log_prob(linear, groups[:1, :1])
    hand = (1 - torch.sigmoid(linear(x[:1], sigma[:1])[0, k])) * w[k].reshape(3, 4, 4)
    step = GradientGuidance(_toy_denoiser, one, 0.5)(x[:1], sigma[:1]) - x0[:1]
    assert torch.allclose(step[0], 0.5 * 1.5**2 * hand, atol=1e-6)
    before, after = log_prob(x0, sigma), log_prob(guided, sigma)
    assert (after > before).all()  # x0_hat moved uphill in log p(y | x)
    assert (after - before < log_prob(x0 + 2 * (guided - x0), sigma) - before).all()  # and further with a larger step


def test_clip_log_prob_gradient_by_hand_through_timestep_net():
    torch.manual_seed(0)
    schedule = DiscreteSchedule.named("cosine", n=1000)
    a = torch.randn(5, 3 * 4 * 4, dtype=torch.float64)  # a linear "CLIP" image tower that ignores t
    tower = TimestepNet(lambda x_vp, t: x_vp.flatten(1) @ a.t(), schedule)
    text = torch.randn(1, 5, dtype=torch.float64)
    log_prob = clip_log_prob(tower, text, scale=3.0)
    x, sigma = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([0.4, 2.0], dtype=torch.float64)
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x_in, sigma).sum(), x_in)
    hand = 3.0 * (text @ a).reshape(1, 3, 4, 4) / (sigma**2 + 1).sqrt()[:, None, None, None]  # d/dx s <A x_vp, e>
    assert torch.allclose(grad, hand)
    guided = GradientGuidance(_toy_denoiser, log_prob, 0.1)(x, sigma)
    assert torch.allclose(guided - _toy_denoiser(x, sigma), 0.1 * sigma[:, None, None, None] ** 2 * hand)

    seen = {}  # TimestepNet feeds a net exactly what DiscreteDenoiser feeds it
    record = lambda key: lambda x_vp, t: seen.setdefault(key, (x_vp, t))[0]
    DiscreteDenoiser(record("denoiser"), schedule, "x0")(x, sigma)
    TimestepNet(record("net"), schedule)(x, sigma)
    assert torch.equal(seen["denoiser"][0], seen["net"][0]) and torch.equal(seen["denoiser"][1], seen["net"][1])


SMALL = ["train.steps=3", "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1",
         "train.ema_decay=0.9", "data.length=12", "classifier.num_samples=3"]


def test_classifier_stage_trains_and_resumes_exactly(tmp_path):
    recipe = load_recipe("tiny_classifier", SMALL)
    quiet = dict(progress=False, log=lambda m: None)
    whole = Trainer(recipe, tmp_path / "whole", **quiet).run()
    assert whole.step == 3 and math.isfinite(whole.loss)
    Trainer(recipe, tmp_path / "split", until_step=2, **quiet).run()
    second = Trainer(recipe, tmp_path / "split", resume=True, **quiet).run()
    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(second.checkpoint)
    assert a.config["stage"] == "classifier" and {k.split(".")[0] for k in a.model} == {"classifier"}
    assert a.model.keys() == b.model.keys()
    assert all(torch.equal(a.model[k], b.model[k]) and torch.equal(a.ema[k], b.ema[k]) for k in a.model)
    logs = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
    assert [r["loss"] for r in logs("whole")] == [r["loss"] for r in logs("split")]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["exact"] <= 1 for r in logs("whole"))
    assert Image.open(tmp_path / "whole" / "samples" / "step_00000003.png").size == (48, 48)  # 3 rows of 3 tiles
    with pytest.raises(RecipeError, match="set by the label space"):
        load_recipe("tiny_classifier", ["classifier.net.num_labels=3"])
    with pytest.raises(RecipeError, match=r"image_size = 16 does not fit the data"):
        Trainer(load_recipe("tiny_classifier", ["data.size=32"]), tmp_path / "misfit", **quiet).run()


def test_tiny_classifier_overfits_a_batch():
    """8 clean 16 px images: all 40 pair labels of each right (exact match 1.0) within 400 Adam steps (~140 here)."""
    torch.manual_seed(0)
    ds = ShapesWorld(size=16)
    items = [ds[i] for i in range(8)]
    x, captions = torch.stack([it[0] for it in items]), [it[1] for it in items]
    recipe = load_recipe("tiny_classifier")
    stage = ClassifierStage(recipe.options, x[:2], captions[:2], torch.device("cpu"))
    opt = torch.optim.Adam(stage.model.parameters(), lr=3e-3)
    rng = None  # clean images (t = 0)
    y = torch.stack([labels_from_metadata(it[2]) for it in items])
    for step in range(400):
        logits = stage.logits(x, rng)
        if ((logits > 0) == (y > 0)).all():
            break
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ((logits > 0) == (y > 0)).all(), f"not separated after {step} steps"
    guide = classifier_log_prob(stage.noisy, labels_from_prompts(captions))  # the trained net guides: finite grads
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(guide(x_in, torch.full((8,), 0.5)).sum(), x_in)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
