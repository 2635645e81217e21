"""diffusers `AutoencoderKL` <-> t2i `AutoencoderKL`: config translation and an explicit key map."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from t2i.io.keymap import Rename, from_layout, renames, to_layout
from t2i.io.weights import load_model_folder, write_model_folder
from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL

_RES = ("norm1", "conv1", "norm2", "conv2")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def vae_config_from_diffusers(d: dict[str, Any]) -> AutoencoderConfig:
    """A diffusers AutoencoderKL config dict (config.json) -> AutoencoderConfig; refuses what t2i lacks."""
    n = len(d.get("block_out_channels", (64,)))
    down = tuple(d.get("down_block_types", ("DownEncoderBlock2D",) * n))
    up = tuple(d.get("up_block_types", ("UpDecoderBlock2D",) * n))
    if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"} or len(down) != n or len(up) != n:
        raise ValueError(f"unsupported diffusers VAE blocks: down={down}, up={up}")
    if d.get("act_fn", "silu") != "silu":
        raise ValueError(f"unsupported diffusers VAE act_fn {d['act_fn']!r} (only 'silu')")
    if d.get("latents_mean") is not None or d.get("latents_std") is not None:
        raise ValueError("diffusers VAE configs with per-channel latents_mean/latents_std are not supported")
    return AutoencoderConfig(
        in_channels=d.get("in_channels", 3),
        out_channels=d.get("out_channels", 3),
        latent_channels=d.get("latent_channels", 4),
        channels=tuple(d.get("block_out_channels", (64,))),
        layers_per_block=d.get("layers_per_block", 1),
        norm_groups=d.get("norm_num_groups", 32),
        mid_attention=d.get("mid_block_add_attention", True),
        use_quant_conv=d.get("use_quant_conv", True),
        use_post_quant_conv=d.get("use_post_quant_conv", True),
        scaling_factor=d.get("scaling_factor", 0.18215),
        shift_factor=d.get("shift_factor") or 0.0,
    )


def vae_config_to_diffusers(cfg: AutoencoderConfig) -> dict[str, Any]:
    """AutoencoderConfig -> the kwargs / config.json of a diffusers AutoencoderKL."""
    n = len(cfg.channels)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(cfg.channels),
        "layers_per_block": cfg.layers_per_block,
        "act_fn": "silu",
        "latent_channels": cfg.latent_channels,
        "norm_num_groups": cfg.norm_groups,
        "scaling_factor": cfg.scaling_factor,
        "shift_factor": cfg.shift_factor or None,
        "use_quant_conv": cfg.use_quant_conv,
        "use_post_quant_conv": cfg.use_post_quant_conv,
        "mid_block_add_attention": cfg.mid_attention,
    }


def _resblock(ours: str, theirs: str, has_skip: bool) -> list[Rename]:
    rows = [r for n in _RES for r in renames(f"{ours}.{n}", f"{theirs}.{n}")]
    return rows + (renames(f"{ours}.skip", f"{theirs}.conv_shortcut") if has_skip else [])


def _mid(ours: str, theirs: str, attention: bool) -> list[Rename]:
    rows = _resblock(f"{ours}.res1", f"{theirs}.resnets.0", False) + _resblock(f"{ours}.res2", f"{theirs}.resnets.1", False)
    if attention:
        a = f"{theirs}.attentions.0"
        rows += renames(f"{ours}.attn.norm", f"{a}.group_norm")
        rows += renames(f"{ours}.attn.attn.to_qkv", (f"{a}.to_q", f"{a}.to_k", f"{a}.to_v"))
        rows += renames(f"{ours}.attn.attn.to_out", f"{a}.to_out.0")
    return rows


def diffusers_table(cfg: AutoencoderConfig) -> list[Rename]:
    """Every t2i VAE tensor and its diffusers name(s), for this config."""
    ch, n = cfg.channels, len(cfg.channels)
    rows = renames("encoder.conv_in", "encoder.conv_in")
    for i in range(n):
        for j in range(cfg.layers_per_block):
            skip = j == 0 and i > 0 and ch[i - 1] != ch[i]
            rows += _resblock(f"encoder.levels.{i}.blocks.{j}", f"encoder.down_blocks.{i}.resnets.{j}", skip)
        if i < n - 1:
            rows += renames(f"encoder.levels.{i}.resample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    rows += _mid("encoder.mid", "encoder.mid_block", cfg.mid_attention)
    rows += renames("encoder.norm_out", "encoder.conv_norm_out") + renames("encoder.conv_out", "encoder.conv_out")
    rows += renames("decoder.conv_in", "decoder.conv_in")
    rows += _mid("decoder.mid", "decoder.mid_block", cfg.mid_attention)
    rch = tuple(reversed(ch))
    for i in range(n):
        for j in range(cfg.layers_per_block + 1):
            skip = j == 0 and i > 0 and rch[i - 1] != rch[i]
            rows += _resblock(f"decoder.levels.{i}.blocks.{j}", f"decoder.up_blocks.{i}.resnets.{j}", skip)
        if i < n - 1:
            rows += renames(f"decoder.levels.{i}.resample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
    rows += renames("decoder.norm_out", "decoder.conv_norm_out") + renames("decoder.conv_out", "decoder.conv_out")
    if cfg.use_quant_conv:
        rows += renames("quant_conv", "quant_conv")
    if cfg.use_post_quant_conv:
        rows += renames("post_quant_conv", "post_quant_conv")
    return rows


def expected_shapes(cfg: AutoencoderConfig) -> dict[str, torch.Size]:
    """t2i tensor name -> shape for this config (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in AutoencoderKL(cfg).state_dict().items()}


def from_diffusers(state: dict[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> t2i AutoencoderKL state dict."""
    return from_layout(diffusers_table(config), state, expected=expected_shapes(config), where="diffusers VAE")


def to_diffusers(state: dict[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """t2i AutoencoderKL state dict -> diffusers AutoencoderKL state dict."""
    return to_layout(diffusers_table(config), state, where="t2i VAE")


def load_diffusers_vae(folder: str | os.PathLike) -> AutoencoderKL:
    """Build a t2i AutoencoderKL from a diffusers `vae/` folder (config.json + safetensors weights)."""
    return load_model_folder(folder, WEIGHTS_NAME, lambda c: AutoencoderKL(vae_config_from_diffusers(c)), from_diffusers)


def save_diffusers_vae(model: AutoencoderKL, folder: str | os.PathLike) -> Path:
    """Write a t2i AutoencoderKL as a diffusers `vae/` folder that AutoencoderKL.from_pretrained reads."""
    state = to_diffusers(model.state_dict(), model.config)
    return write_model_folder(folder, vae_config_to_diffusers(model.config), state, WEIGHTS_NAME)
