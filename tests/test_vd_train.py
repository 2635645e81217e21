"""[vd] The four-flow training stage through the one Trainer: a tiny LDM starts the image data layers, a tiny
CLIP run gives the contexts and a tiny text VAE run the text latents; a few steps train every flow, and the run
exports to a `vd` system that captions, varies text and draws."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from t2i.train import RecipeError, Trainer, load_recipe, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(progress=False, log=lambda m: None)
SMALL = ["train.batch_size=4", "train.checkpoint_every=3", "train.log_every=1", "data.length=12"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from t2i.systems.ldm import LDM

    root = tmp_path_factory.mktemp("vd_parts")
    Trainer(load_recipe("tiny_clip", SMALL + ["train.steps=2", "clip.num_samples=2"]), root / "clip", **QUIET).run()
    Trainer(load_recipe("tiny_text_vae", SMALL + ["train.steps=2", "text_vae.num_samples=2"]), root / "tvae",
            **QUIET).run()
    LDM.tiny().save(root / "ldm")
    return [f"vd.init_from={root / 'ldm'}", f"vd.clip_run={root / 'clip'}", f"vd.text_vae_run={root / 'tvae'}"]


def test_image_data_layers_start_from_the_ldm(parts):
    from t2i.systems.ldm import LDM
    from t2i.train.stages.vd import build_system

    ldm = LDM.load(parts[0].split("=", 1)[1])
    system = build_system(load_recipe("tiny_vd", parts).options, 16)
    unet = ldm.unet.state_dict()
    own = system.net.data["image"].state_dict()
    assert own and all(torch.equal(v, unet[k]) for k, v in own.items())
    assert all(torch.equal(v, unet[f"time_embed.{k}"]) for k, v in system.net.time_embed.state_dict().items())
    q = next(k for k in system.net.context["image"][0].state_dict() if "to_q" in k)
    assert torch.equal(system.net.context["image"][0].state_dict()[q], unet[f"{system.net.slots[0]}.attn.{q}"])


def test_four_flows_train_and_export(parts, tmp_path):
    from t2i.api.vd_runs import system_from_vd_run

    result = Trainer(load_recipe("tiny_vd", SMALL + parts + ["train.steps=3"]), tmp_path / "vd", **QUIET).run()
    assert result.step == 3 and math.isfinite(result.loss)
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt.config["stage"] == "vd" and {k.split(".")[0] for k in ckpt.model} == {"net"}
    logs = [json.loads(line) for line in (tmp_path / "vd" / "metrics.jsonl").open()]
    flows = ("loss_image_text", "loss_image_image", "loss_text_image", "loss_text_text")
    assert len(logs) == 3 and all(math.isfinite(r[k]) for r in logs for k in flows)
    assert (tmp_path / "vd" / "samples" / "step_00000003.png").is_file()
    scale = json.loads(ckpt.extra("vd.json"))["text_scale"]
    system = system_from_vd_run(tmp_path / "vd")
    assert system.config.text_scale == scale > 0
    assert all(torch.equal(v, ckpt.ema[f"net.{k}"]) for k, v in system.net.state_dict().items())
    image = Image.new("RGB", (16, 16), (220, 40, 40))
    assert len(system.caption(image, n=2)) == 2 and len(system.vary_text("a red circle", n=2)) == 2
    assert system.generate("a red circle")[0].size == (16, 16)


def test_recipe_misfits_are_one_line(parts, tmp_path):
    with pytest.raises(RecipeError, match="weights"):
        load_recipe("tiny_vd", ["vd.weights=[1, 1]"])
    with pytest.raises(RecipeError, match="no complete checkpoint"):
        Trainer(load_recipe("tiny_vd", parts[:2] + [f"vd.text_vae_run={tmp_path}"]), tmp_path / "x", **QUIET).run()
