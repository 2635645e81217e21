"""The original LDM / Stable Diffusion single-file VAE layout (`first_stage_model.*`) <-> t2i AutoencoderKL.

In that layout the mid-block attention's q/k/v/proj_out are 1x1 convs (C, C, 1, 1); t2i keeps
them as one fused Linear. `t2i/io/sd_single_file.py` calls these on the `first_stage_model.`
part of a checkpoint with the prefix already stripped.
"""

from __future__ import annotations

import re

import torch

from t2i.io.diffusers_vae import diffusers_table, expected_shapes
from t2i.io.keymap import Rename, from_layout, to_layout
from t2i.nn.autoencoder import AutoencoderConfig

PREFIX = "first_stage_model."
_RULES = (  # diffusers name piece -> LDM name piece; decoder levels are renumbered separately
    (r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
    (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"mid_block\.resnets\.0\.", "mid.block_1."),
    (r"mid_block\.resnets\.1\.", "mid.block_2."),
    (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
    (r"mid_block\.attentions\.0\.to_(q|k|v)\.", r"mid.attn_1.\1."),
    (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
    (r"\.upsamplers\.0\.", ".upsample."),
    (r"\.resnets\.", ".block."),
    (r"conv_shortcut", "nin_shortcut"),
    (r"conv_norm_out", "norm_out"),
)


def _ldm_name(diffusers_name: str, levels: int) -> str:
    """One diffusers VAE tensor name -> its LDM name."""
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.", diffusers_name)
    for pattern, repl in _RULES:
        name = re.sub(pattern, repl, name)
    return name


def ldm_table(cfg: AutoencoderConfig) -> list[Rename]:
    """Every t2i VAE tensor and its name(s) in the original LDM layout (without `first_stage_model.`).

    Derived from the diffusers table by renaming; the mid-block attention weights are 1x1 convs here.
    """
    n = len(cfg.channels)
    return [
        Rename(r.ours, tuple(_ldm_name(k, n) for k in r.theirs), conv1x1=".attn.attn." in r.ours and r.ours.endswith("weight"))
        for r in diffusers_table(cfg)
    ]


def vae_config_from_ldm(state: dict[str, torch.Tensor], *, norm_groups: int = 32, scaling_factor: float = 0.18215) -> AutoencoderConfig:
    """Infer an AutoencoderConfig from LDM-layout VAE tensor shapes (GroupNorm groups and scale cannot be read)."""
    try:
        levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.block\.", k))})
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
        channels = tuple(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels)
        return AutoencoderConfig(
            in_channels=state["encoder.conv_in.weight"].shape[1],
            out_channels=state["decoder.conv_out.weight"].shape[0],
            latent_channels=state["decoder.conv_in.weight"].shape[1],
            channels=channels,
            layers_per_block=len(blocks),
            norm_groups=norm_groups,
            mid_attention="encoder.mid.attn_1.q.weight" in state,
            use_quant_conv="quant_conv.weight" in state,
            use_post_quant_conv="post_quant_conv.weight" in state,
            scaling_factor=scaling_factor,
        )
    except KeyError as e:
        raise ValueError(f"LDM VAE: cannot infer the config, tensor {e} is missing") from None


def from_ldm(state: dict[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """LDM-layout VAE tensors (prefix stripped) -> t2i AutoencoderKL state dict."""
    return from_layout(ldm_table(config), state, expected=expected_shapes(config), where="LDM VAE")


def to_ldm(state: dict[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """t2i AutoencoderKL state dict -> LDM-layout VAE tensors (no prefix)."""
    return to_layout(ldm_table(config), state, where="t2i VAE")
