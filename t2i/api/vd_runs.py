"""A `t2i train` vd run -> the `vd` system (Versatile Diffusion, Xu et al. 2023): the run's EMA multi-flow network
over the LDM, CLIP and text VAE its recipe names, with the text latents' scale the run measured."""

from __future__ import annotations

import json
import os
from pathlib import Path


def system_from_vd_run(run: str | os.PathLike, step: int | None = None):
    """The VersatileDiffusion system of a vd run (its newest good checkpoint, or the one of `step`) or checkpoint
    folder; `system.save(folder)` writes it as a t2i `vd` folder."""
    from t2i.api.runs import _load_ema, _run_checkpoint
    from t2i.train.recipe import Recipe
    from t2i.train.stages.vd import build_system

    ckpt_path, ckpt = _run_checkpoint(Path(run), step)
    if ckpt.config.get("stage") != "vd":
        raise ValueError(f"{ckpt_path}: not a vd run (stage {ckpt.config.get('stage')!r})")
    recipe = Recipe.from_dict(ckpt.config)
    system = build_system(recipe.options, recipe.data.size, json.loads(ckpt.extra("vd.json"))["text_scale"])
    _load_ema(ckpt, ckpt_path, {"net": system.net})
    system.name = Path(run).name
    return system.eval()
