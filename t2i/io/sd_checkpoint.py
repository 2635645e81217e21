"""A whole original single-file Stable Diffusion checkpoint (.safetensors) -> a t2i LDM system.

The networks come from `sd_single_file` (which calls the VAE / CLIP maps of `ldm_vae` / `ldm_clip`).
Such a file holds no tokenizer and no scheduler, and not the head counts of its attention layers:
they are read from a diffusers-layout config folder (tokenizer/, and optionally scheduler/,
unet/config.json, text_encoder/config.json) beside the file or given as `config_dir`. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from torch import nn

from t2i.encoders.clip_tokenizer import CLIPTokenizer
from t2i.io.diffusers_pipeline import assemble_sd
from t2i.io.sd_single_file import load_sd_single_file
from t2i.io.weights import check_safetensors_file, load_into
from t2i.nn.autoencoder import AutoencoderKL
from t2i.systems.ldm import LDM

# What SD's own inference configs (v1-inference.yaml) and diffusers' single-file loader assume when
# no scheduler config is given: scaled-linear betas, eps prediction, DDIM with steps_offset 1.
DEFAULT_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                     "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon",
                     "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
                     "timestep_spacing": "leading"}


def find_config_dir(path: Path) -> Path | None:
    """A folder with tokenizer/ beside the checkpoint: FILE's own folder, or FILE without its suffix."""
    for d in (path.parent, path.with_suffix("")):
        if (d / "tokenizer").is_dir():
            return d
    return None


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_sd_checkpoint(path: str | os.PathLike, config_dir: str | os.PathLike | None = None,
                       name: str | None = None) -> LDM:
    """Read an original SD 1.x / 2.x single file with its tokenizer (and scheduler) config folder."""
    path = check_safetensors_file(path)  # an unreadable or pickle file is named before anything else
    folder = Path(config_dir) if config_dir is not None else find_config_dir(path)
    if folder is None or not (folder / "tokenizer").is_dir():
        raise ValueError(f"{path}: a single-file checkpoint carries no tokenizer; put a diffusers-style "
                         "tokenizer/ folder (vocab.json + merges.txt) beside it or pass its folder as --config")
    unet_cfg = _json(folder / "unet" / "config.json")
    text_cfg = _json(folder / "text_encoder" / "config.json")
    heads = unet_cfg.get("num_attention_heads") or unet_cfg.get("attention_head_dim")  # diffusers' naming quirk
    heads = tuple(heads) if isinstance(heads, list) else heads
    weights = load_sd_single_file(path, num_heads=heads, norm_groups=unet_cfg.get("norm_num_groups", 32),
                                  text_heads=text_cfg.get("num_attention_heads"))
    if weights.vae is None or weights.text_encoder is None:
        lacks = [n for n, part in (("first_stage_model (VAE)", weights.vae),
                                   ("cond_stage_model (text encoder)", weights.text_encoder)) if part is None]
        raise ValueError(f"{path}: the checkpoint lacks {' and '.join(lacks)}: not a whole Stable Diffusion model")
    unet, vae = weights.unet, weights.vae
    # the VAE's GroupNorm groups and latent scale are not in the tensors: take them from the config folder
    vae_cfg = _json(folder / "vae" / "config.json")
    vcfg = replace(vae.config, norm_groups=vae_cfg.get("norm_num_groups", vae.config.norm_groups),
                   scaling_factor=vae_cfg.get("scaling_factor", vae.config.scaling_factor))
    if vcfg != vae.config:
        vae = _rebuilt(AutoencoderKL(vcfg), vae)
    scheduler = _json(folder / "scheduler" / "scheduler_config.json") or DEFAULT_SCHEDULER
    return assemble_sd(unet, vae, weights.text_encoder, CLIPTokenizer.from_folder(folder / "tokenizer"), scheduler,
                       text_cfg, unet_cfg, name or path.stem)


def _rebuilt(fresh: nn.Module, loaded: nn.Module) -> nn.Module:
    """`fresh` (same tensors, other non-tensor settings) holding the weights of `loaded`."""
    load_into(fresh, loaded.state_dict())
    return fresh
