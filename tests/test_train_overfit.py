"""Sanity: the real trainer, UNet and ShapesWorld overfit one batch in seconds, so a trainer that
cannot learn ("samples are pure noise") fails the suite rather than a user's week-long run."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from t2i.diffusion import diffusion_loss
from t2i.train import Trainer, load_recipe
from t2i.train.stages.base import first_examples

STEPS = 150
OVERFIT = [f"train.steps={STEPS}", "data.length=4", "train.batch_size=4", "train.lr=5e-3", "train.ema_decay=0.0",
           "train.warmup_steps=0", "train.lr_schedule='constant'", "train.checkpoint_every=1000",
           "train.log_every=10", "diffusion.p_uncond=0.0", "diffusion.num_samples=4", "diffusion.sample_steps=4"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@torch.no_grad()
def fixed_draw_report(stage, images, captions):
    """The loss at fixed noise levels and noise, and the x0 error at sigma = 1."""
    g = torch.Generator().manual_seed(123)
    cond = stage.encode_text(captions)
    sigma = torch.tensor([0.1, 0.3, 0.6, 1.0]).repeat_interleave(len(images) // 4 or 1)[: len(images)]
    noise = torch.randn(images.shape, generator=g)
    loss = float(diffusion_loss(stage.denoiser, images, cond, sigma=sigma, noise=noise))
    one = torch.ones(len(images))
    x0 = stage.denoiser(images + noise, one, cond)
    return loss, float((x0 - images).pow(2).mean())


def test_overfits_one_shapesworld_batch(tmp_path):
    recipe = load_recipe("tiny_pixel", OVERFIT)
    trainer = Trainer(recipe, tmp_path, progress=False, log=lambda m: None)
    trainer.setup()
    images, captions = first_examples(trainer.dataset, 4)
    loss_before, x0_before = fixed_draw_report(trainer.stage, images, captions)

    result = trainer.run()  # builds the same initial weights again (same seed) and trains
    trainer.model.eval()
    loss_after, x0_after = fixed_draw_report(trainer.stage, images, captions)
    variance = float((images - images.mean()).pow(2).mean())  # the error of predicting the mean image

    assert result.step == STEPS
    assert loss_after < 0.55 * loss_before, (loss_before, loss_after)  # measured: 0.86 -> 0.35
    assert x0_after < 0.3 * variance, (x0_after, variance)  # measured: 0.35 -> 0.08 (variance 0.38)
    logged = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert sum(logged[-3:]) / 3 < 0.8 * logged[0], logged  # noisy: each step draws new noise levels
    grid = Image.open(tmp_path / "samples" / f"step_{STEPS:08d}.png")
    assert grid.size == (32, 32)  # 2 x 2 samples of 16 px
