"""CLIP and GLIDE's noise-aware CLIP: the contrastive loss by hand and against transformers, the ViT tower,
the clip stage through the one Trainer (checkpoint, exact resume), and a tiny CLIP that overfits 8 images."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from t2i.data.shapes import ShapesWorld
from t2i.encoders.clip import CLIPConfig, CLIPModel, caption_positives, clip_loss, retrieval_accuracy
from t2i.encoders.text import TextEncoderConfig
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.transformer import TransformerConfig
from t2i.nn.vit import ViT, ViTConfig
from t2i.train import RecipeError, Trainer, load_recipe, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_clip(noise_aware: bool = False) -> CLIPModel:
    cfg = CLIPConfig(embed_dim=32, noise_aware=noise_aware,
                     image=ViTConfig(image_size=16, patch_size=4, transformer=TransformerConfig(width=32, layers=1, heads=2)),
                     text=TextEncoderConfig(width=32, layers=1, heads=2, max_length=24))
    return CLIPModel(cfg, WordTokenizer.for_shapes())


def _hand_loss(sim: list[list[float]], scale: float, groups: list[int]) -> float:
    """CLIP's loss written out: mean over rows of -sum_j target_ij log softmax_j, for images and texts, halved."""
    n = len(sim)

    def direction(logit) -> float:
        total = 0.0
        for i in range(n):
            row = [scale * logit(i, j) for j in range(n)]
            log_z = math.log(sum(math.exp(v) for v in row))
            pos = [j for j in range(n) if groups[j] == groups[i]]
            total += -sum((row[j] - log_z) / len(pos) for j in pos)
        return total / n

    return (direction(lambda i, j: sim[i][j]) + direction(lambda i, j: sim[j][i])) / 2


def test_clip_loss_by_hand_with_repeated_captions():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.3, 1.0, 0.0], [0.1, 0.4, 1.0]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[0.2, 0.4, 1.0], [0.0, 1.0, 0.1], [1.0, 0.0, 0.3]]), dim=-1)
    sim = (img @ txt.t()).tolist()
    scale = 1 / 0.07
    assert clip_loss(img, txt, scale).item() == pytest.approx(_hand_loss(sim, scale, [0, 1, 2]), rel=1e-5)
    assert clip_loss(img, txt, scale, torch.eye(3, dtype=torch.bool)).item() == pytest.approx(
        _hand_loss(sim, scale, [0, 1, 2]), rel=1e-5)  # distinct captions: the plain CLIP loss

    captions = ["a red circle", "two squares", "a red circle"]
    pos = caption_positives(captions)
    assert pos.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert clip_loss(img, txt, scale, pos).item() == pytest.approx(_hand_loss(sim, scale, [0, 1, 0]), rel=1e-5)
    # images 0 and 2 retrieve each other's text: hits when equal captions are positives, misses otherwise
    assert [max(range(3), key=lambda j: sim[i][j]) for i in range(3)] == [2, 1, 0]
    assert retrieval_accuracy(img, txt, pos) == 1.0 and retrieval_accuracy(img, txt) == pytest.approx(1 / 3)


def test_vit_shapes_and_timestep_input():
    cfg = ViTConfig(image_size=16, patch_size=4, transformer=TransformerConfig(width=32, layers=1, heads=2), proj_dim=8)
    assert ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    vit = ViT(cfg)
    pooled, tokens = vit(torch.randn(2, 3, 16, 16))
    assert pooled.shape == (2, 8) and tokens.shape == (2, 1 + 16, 32)
    with pytest.raises(ValueError, match="not noise-aware"):
        vit(torch.randn(2, 3, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 16, 16\)"):
        vit(torch.randn(2, 3, 32, 32))

    torch.manual_seed(0)
    noisy = tiny_clip(noise_aware=True)
    assert CLIPConfig.from_dict(json.loads(json.dumps(noisy.config.to_dict()))) == noisy.config
    x = torch.randn(2, 3, 16, 16)
    e0, e1 = noisy.encode_image(x, torch.zeros(2)), noisy.encode_image(x, torch.full((2,), 500.0))
    assert e0.shape == (2, 32) and torch.allclose(e0.norm(dim=-1), torch.ones(2))
    assert (e0 - e1).abs().max() > 1e-3  # the timestep changes the embedding
    with pytest.raises(ValueError, match="noise-aware: pass timesteps"):
        noisy.encode_image(x)
    assert tiny_clip().encode_text(["a red circle", "two squares"]).shape == (2, 32)


SMALL = ["train.steps=4", "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1",
         "train.ema_decay=0.9", "data.length=12", "clip.num_samples=3"]


@pytest.mark.parametrize("noise_aware", [False, True])
def test_clip_stage_trains_checkpoints_and_resumes_exactly(tmp_path, noise_aware):
    recipe = load_recipe("tiny_clip", SMALL + [f"clip.noise_aware={str(noise_aware).lower()}"])
    quiet = dict(progress=False, log=lambda m: None)
    whole = Trainer(recipe, tmp_path / "whole", **quiet).run()
    assert whole.step == 4 and math.isfinite(whole.loss)
    Trainer(recipe, tmp_path / "split", until_step=2, **quiet).run()
    second = Trainer(recipe, tmp_path / "split", resume=True, **quiet).run()

    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(second.checkpoint)
    assert a.config["stage"] == "clip" and {k.split(".")[0] for k in a.model} == {"clip"}
    assert any(k.startswith("clip.image.time_embedding") for k in a.model) == noise_aware
    assert a.model.keys() == b.model.keys()
    assert all(torch.equal(a.model[k], b.model[k]) and torch.equal(a.ema[k], b.ema[k]) for k in a.model)
    logs = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
    assert [r["loss"] for r in logs("whole")] == [r["loss"] for r in logs("split")]
    assert all(0 <= r["accuracy"] <= 1 and r["logit_scale"] <= 100 for r in logs("whole"))
    assert WordTokenizer.from_json((second.checkpoint / "tokenizer.json").read_text()).vocab == \
        WordTokenizer.for_shapes().vocab
    assert Image.open(tmp_path / "whole" / "samples" / "step_00000004.png").size == (48, 16 + 48)  # images over 3x3


def test_clip_stage_names_a_misfit_image_size(tmp_path):
    with pytest.raises(RecipeError, match=r"image_size = 16 does not fit the data \(images of shape \(3, 32, 32\)"):
        Trainer(load_recipe("tiny_clip", ["data.size=32"]), tmp_path, progress=False, log=lambda m: None).run()
    with pytest.raises(RecipeError, match="set \\[clip\\] noise_aware instead"):
        load_recipe("tiny_clip", ["clip.net.noise_aware=true"])


def test_tiny_clip_overfits_eight_images_to_perfect_retrieval():
    """8 ShapesWorld images, two of them captioned "two squares" (positives for each other): image -> text
    retrieval reaches 1.0 (in ~30 steps; bounded at 150)."""
    ds = ShapesWorld(size=16)
    items = [ds[i] for i in (0, 1, 2, 3, 4, 5, 6, 343)]
    x, captions = torch.stack([it[0] for it in items]), [it[1] for it in items]
    assert captions[2] == captions[7] == "two squares"
    torch.manual_seed(0)
    model = tiny_clip()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(150):
        loss, accuracy = model.loss(model.encode_image(x), captions)
        first = float(loss.detach()) if first is None else first
        if accuracy == 1.0:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy == 1.0, f"retrieval accuracy {accuracy} after {step} steps"
    assert float(loss.detach()) < first / 2


def test_contrastive_loss_matches_transformers_clip():
    transformers = pytest.importorskip("transformers")
    from transformers.models.clip import modeling_clip

    hf_clip_loss = getattr(modeling_clip, "image_text_contrastive_loss", None) or modeling_clip.clip_loss  # 5.x | 4.x

    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=24)
    torch.manual_seed(0)
    hf = transformers.CLIPModel(cfg).eval()
    ids = torch.randint(3, 60, (4, 7))
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=torch.randn(4, 3, 16, 16), return_loss=True)
        scale = hf.logit_scale.exp()
        ours = clip_loss(out.image_embeds, out.text_embeds, scale)
        assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)
        assert ours.item() == pytest.approx(hf_clip_loss(out.logits_per_text).item(), rel=1e-5)
        assert clip_loss(out.image_embeds, out.text_embeds, scale, torch.eye(4, dtype=torch.bool)).item() == \
            pytest.approx(out.loss.item(), rel=1e-5)
    assert math.log(1 / 0.07) == pytest.approx(tiny_clip().logit_scale.item())  # CLIP's initial temperature
