"""Conversion: any model t2i reads -> a t2i folder, a diffusers folder or one original-layout file; a
guide run -> a guide folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from t2i.api.guides import guide_kind, load_guide
from t2i.api.loading import load
from t2i.api.runs import checkpoint_of_step, controlnet_from_training_runs, is_training_run


CONVERT_FORMATS = ("t2i", "diffusers", "single-file")


CONVERT_DTYPES = ("float32", "float16", "bfloat16")


def convert(src: str | os.PathLike | Sequence[str | os.PathLike], dst: str | os.PathLike, to: str | None = None,
            config_dir: str | os.PathLike | None = None, dtype: str = "float32", step: int | None = None) -> Path:
    """Read a model in any format t2i reads and write it as a t2i folder, a diffusers folder or one
    original-layout .safetensors file (default: diffusers for a t2i folder, t2i for anything else);
    a t2i folder may store its weights as float16 or bfloat16 (`dtype`). A guide (a noise-aware clip or
    classifier run, or a guide folder) is written as a guide folder, e.g. a GLIDE folder's guide_clip/.
    Several diffusers folders are one cascade (DeepFloyd IF's IFPipeline, then its IFSuperResolutionPipeline);
    other sources are controlnet training runs: one ControlNet system of them (one kind each). `step` picks a
    training run's checkpoint of that step instead of its newest."""
    runs = [Path(s) for s in src] if isinstance(src, (list, tuple)) else [Path(src)]
    src, dst = runs[0], Path(dst)
    if step is not None:
        not_runs = [r for r in runs if not is_training_run(r)]
        if not_runs:
            raise ValueError(f"--step {step} picks a checkpoint of a `t2i train` run; {not_runs[0]} is not one")
        if len(runs) == 1:  # one run: its checkpoint of that step
            src = runs[0] = checkpoint_of_step(src, step)
            step = None
    if dtype not in CONVERT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(CONVERT_DTYPES)}")
    if dst.exists() and (dst.is_file() or any(dst.iterdir())):
        raise ValueError(f"{dst} already exists and is not empty; give a new path")
    kind = guide_kind(src) if len(runs) == 1 else None
    if kind is not None:
        if to not in (None, "t2i"):
            raise ValueError(f"{src} is a {kind} guide: it converts to a t2i guide folder only (--to t2i)")
        import torch

        return load_guide(src).save(dst, dtype=getattr(torch, dtype))
    if to is None:
        to = "diffusers" if (src / "system.json").is_file() else "t2i"  # a diffusers, single-file or training run
    if to not in CONVERT_FORMATS:
        raise ValueError(f"unknown target format {to!r}; choose from {', '.join(CONVERT_FORMATS)}")
    if dtype != "float32" and to != "t2i":
        raise ValueError(f"--dtype {dtype} is for t2i folders; diffusers and single-file exports are float32")
    from t2i.io.diffusers_folders import load_diffusers_folders
    from t2i.io.diffusers_pipeline import is_diffusers_folder

    if len(runs) > 1 and step is None and all(is_diffusers_folder(r) for r in runs):
        if to != "t2i":
            raise ValueError("several diffusers folders (IF stage I, stage II): one cascade, converted to a t2i "
                             "folder only (--to t2i)")
        system = load_diffusers_folders(*runs)
    elif len(runs) > 1:
        if to != "t2i":
            raise ValueError("several training runs: controlnet runs, converted to a t2i folder only")
        system = controlnet_from_training_runs(runs, step)
    else:
        system = load(src, config_dir=config_dir)
    if to == "t2i":
        import torch

        return system.save(dst, dtype=getattr(torch, dtype))
    if not hasattr(system, "autoencoder"):
        raise ValueError(f"{src}: a {type(system).__name__} converts to a t2i folder only (--to t2i)")
    if to == "diffusers":
        from t2i.io.diffusers_pipeline import save_diffusers_pipeline

        return save_diffusers_pipeline(system, dst)
    from t2i.io.sd_single_file import StableDiffusionWeights, save_sd_single_file

    if dst.suffix.lower() != ".safetensors":
        raise ValueError(f"{dst}: a single-file checkpoint is written as a '.safetensors' file")
    if system.config.text.kind != "clip":
        raise ValueError("only CLIP-text systems have an original single-file layout")
    weights = StableDiffusionWeights(unet=system.unet, vae=system.autoencoder,
                                     text_encoder=system.text_encoder.transformer)
    return save_sd_single_file(weights, dst)

