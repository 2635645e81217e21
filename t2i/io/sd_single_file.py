"""The original single-file Stable Diffusion checkpoint (CompVis / Stability layout) <-> t2i models.

One safetensors file holds the UNet under `model.diffusion_model.` (LDM's `openaimodel.UNetModel`
names), the KL autoencoder under `first_stage_model.` and the text encoder under
`cond_stage_model.transformer.` (SD 1.x, OpenAI CLIP) or `cond_stage_model.model.` (SD 2.x,
OpenCLIP). The UNet map is defined here; the VAE and text-encoder maps live in `ldm_vae` /
`ldm_clip` and are called on their parts. Everything else in such a file (EMA copies, the
noise schedule buffers) is not a weight of these networks and is reported as ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2i.io import ldm_clip, ldm_vae
from t2i.io.diffusers_unet import UNetLayout, diffusers_table
from t2i.io.keymap import Rename
from t2i.io.weights import load_into, load_safetensors, save_safetensors
from t2i.nn.autoencoder import AutoencoderKL
from t2i.nn.transformer import TextTransformer
from t2i.nn.unet import UNet, UNetConfig

UNET_PREFIX = "model.diffusion_model."
SD1_HEADS = 8  # v1-inference.yaml: num_heads 8 (1x1-conv projections)
SD2_HEAD_DIM = 64  # v2-inference.yaml: num_head_channels 64 (linear projections)

_RES_PARAMS = (  # diffusers resnet piece -> LDM ResBlock piece
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_FIXED = (  # diffusers top-level piece -> LDM piece
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("class_embedding.linear_1.", "label_emb.0.0."),
    ("class_embedding.linear_2.", "label_emb.0.2."),
    ("class_embedding.weight", "label_emb.weight"),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
    ("mid_block.resnets.0.", "middle_block.0."),
    ("mid_block.attentions.0.", "middle_block.1."),
    ("mid_block.resnets.1.", "middle_block.2."),
)


def _res_param(rest: str) -> str:
    """A diffusers resnet parameter name -> LDM ResBlock's (in_layers / emb_layers / out_layers / skip_connection)."""
    for a, b in _RES_PARAMS:
        if rest.startswith(a):
            return b + rest[len(a):]
    raise ValueError(f"no LDM name for resnet parameter '{rest}'")


def _ldm_unet_name(name: str, cfg: UNetConfig) -> str:
    """One diffusers UNet tensor name -> its name in LDM's UNetModel (without the file prefix)."""
    per_level, n = cfg.num_res_blocks + 1, len(cfg.block_channels)
    for a, b in _FIXED:
        if name.startswith(a):
            rest = name[len(a):]
            return b + (_res_param(rest) if ".resnets." in a else rest)
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", name)
    if m is None:
        raise ValueError(f"no LDM name for UNet tensor '{name}'")
    side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
    if kind == "resnets":
        rest = _res_param(rest)
    if kind == "downsamplers":  # rest is "conv.<param>"
        return f"input_blocks.{(i + 1) * per_level}.0.op.{rest.split('.', 1)[1]}"
    if kind == "upsamplers":  # after the block's attention, if it has one
        slot = 2 if (n - 1 - i) in cfg.attention_levels else 1
        return f"output_blocks.{i * per_level + cfg.num_res_blocks}.{slot}.{rest}"
    slot = 0 if kind == "resnets" else 1
    if side == "down":
        return f"input_blocks.{1 + i * per_level + j}.{slot}.{rest}"
    return f"output_blocks.{i * per_level + j}.{slot}.{rest}"


def ldm_unet_table(cfg: UNetConfig, *, linear_projection: bool = False) -> list[Rename]:
    """Every t2i UNet tensor and its LDM name(s) (no prefix), derived from the diffusers table by renaming."""
    return [
        Rename(r.ours, tuple(_ldm_unet_name(k, cfg) for k in r.theirs), r.conv1x1)
        for r in diffusers_table(cfg, linear_projection=linear_projection)
    ]


LDM_LAYOUT = UNetLayout(ldm_unet_table, "SD single-file UNet")
unet_from_ldm = LDM_LAYOUT.read  # LDM-layout UNet tensors (prefix stripped) -> t2i UNet state dict
unet_to_ldm = LDM_LAYOUT.write  # t2i UNet state dict -> LDM-layout UNet tensors (no prefix)


def _indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def unet_config_from_ldm(
    state: dict[str, torch.Tensor],
    *,
    num_heads: int | tuple[int, ...] | None = None,
    head_dim: int | None = None,
    norm_groups: int = 32,
) -> UNetConfig:
    """Infer a UNetConfig from LDM-layout UNet tensors (prefix stripped).

    Shapes cannot tell the head count: by default SD 1.x files (1x1-conv projections) get 8
    heads and SD 2.x files (linear projections) 64-wide heads, as their original configs say.
    """
    try:
        ch0 = state["input_blocks.0.0.weight"].shape[0]
        blocks = _indices(state, r"input_blocks\.(\d+)\.")
        channels, counts, attn_levels = [ch0], [0], set()
        for k in blocks[1:]:
            if f"input_blocks.{k}.0.op.weight" in state:
                channels.append(channels[-1])
                counts.append(0)
                continue
            channels[-1] = state[f"input_blocks.{k}.0.in_layers.2.weight"].shape[0]
            counts[-1] += 1
            if f"input_blocks.{k}.1.norm.weight" in state:
                attn_levels.add(len(channels) - 1)
        if len(set(counts)) != 1:
            raise ValueError(f"SD single-file UNet: uneven res blocks per level {counts}")
        depth = len(_indices(state, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
        proj = state["middle_block.1.proj_in.weight"]
        linear = proj.ndim == 2
        if num_heads is None and head_dim is None:
            num_heads, head_dim = (None, SD2_HEAD_DIM) if linear else (SD1_HEADS, None)
        emb = state["time_embed.0.weight"].shape[0]
        last_res = state["middle_block.0.emb_layers.1.weight"].shape[0]
        num_classes = state["label_emb.weight"].shape[0] if "label_emb.weight" in state else None
        pooled_dim = state["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in state else None
        return UNetConfig(
            in_channels=state["input_blocks.0.0.weight"].shape[1],
            out_channels=state["out.2.weight"].shape[0],
            block_channels=tuple(channels),
            num_res_blocks=counts[0],
            attention_levels=tuple(sorted(attn_levels)),
            mid_attention=True,
            num_heads=num_heads,
            head_dim=head_dim,
            transformer_depth=depth,
            attention_block="transformer",
            context_dim=state["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
            time_embed_dim=None if emb == 4 * ch0 else emb,
            scale_shift=last_res == 2 * channels[-1],
            pooled_dim=pooled_dim,
            pooled_mlp=pooled_dim is not None,
            num_classes=num_classes,
            norm_groups=norm_groups,
        )
    except KeyError as e:
        raise ValueError(f"SD single-file UNet: cannot infer the config, tensor {e} is missing") from None


def uses_linear_projection(state: dict[str, torch.Tensor]) -> bool:
    """Whether LDM-layout UNet tensors (prefix stripped) hold Linear (SD 2.x) transformer projections."""
    return state["middle_block.1.proj_in.weight"].ndim == 2


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@dataclass
class StableDiffusionWeights:
    """The networks of one single-file checkpoint; the parts the file lacks are None."""

    unet: UNet
    vae: AutoencoderKL | None = None
    text_encoder: TextTransformer | None = None
    linear_projection: bool = False  # SD 2.x layout of the UNet's transformer projections
    openclip: bool = False  # the text encoder came from / goes to `cond_stage_model.model.` (SD 2.x)
    ignored: list[str] = field(default_factory=list)  # tensors of the file that none of the networks hold


def load_sd_single_file(
    path: str | os.PathLike,
    *,
    num_heads: int | tuple[int, ...] | None = None,
    head_dim: int | None = None,
    norm_groups: int = 32,
    text_heads: int | None = None,
    vae: bool = True,
    text_encoder: bool = True,
) -> StableDiffusionWeights:
    """Read an original single-file SD checkpoint (.safetensors only: pickle .ckpt files are refused).

    Head counts and GroupNorm groups are not stored in such files: `num_heads` / `head_dim` override
    the UNet's SD 1.x / 2.x defaults, `norm_groups` its 32 groups and `text_heads` the text encoder's
    (64-wide heads by default).
    """
    state = load_safetensors(path)
    where = str(path)
    unet_state = _strip(state, UNET_PREFIX)
    if not unet_state:
        raise ValueError(f"{where}: no '{UNET_PREFIX}*' tensors: not an original Stable Diffusion checkpoint")
    cfg = unet_config_from_ldm(unet_state, num_heads=num_heads, head_dim=head_dim, norm_groups=norm_groups)
    unet = UNet(cfg)
    load_into(unet, unet_from_ldm(unet_state, cfg), where=where)
    out = StableDiffusionWeights(unet=unet, linear_projection=uses_linear_projection(unet_state))
    used = [UNET_PREFIX]

    vae_state = _strip(state, ldm_vae.PREFIX)
    if vae and vae_state:
        vcfg = ldm_vae.vae_config_from_ldm(vae_state)
        out.vae = AutoencoderKL(vcfg)
        load_into(out.vae, ldm_vae.from_ldm(vae_state, vcfg), where=where)
        used.append(ldm_vae.PREFIX)

    clip_state, open_state = _strip(state, ldm_clip.PREFIX), _strip(state, ldm_clip.OPENCLIP_PREFIX)
    if text_encoder and clip_state:
        clip_state = {k: v for k, v in clip_state.items() if not k.endswith("position_ids")}
        tcfg = ldm_clip.clip_config_from_ldm(clip_state, heads=text_heads)
        out.text_encoder = TextTransformer(tcfg)
        load_into(out.text_encoder, ldm_clip.from_ldm(clip_state, tcfg), where=where)
        used.append(ldm_clip.PREFIX)
    elif text_encoder and open_state:
        tcfg = ldm_clip.openclip_config_from_ldm(open_state, heads=text_heads)
        out.text_encoder = TextTransformer(tcfg)
        load_into(out.text_encoder, ldm_clip.from_openclip(open_state, tcfg), where=where)
        out.openclip = True
        used.append(ldm_clip.OPENCLIP_PREFIX)
    out.ignored = sorted(k for k in state if not k.startswith(tuple(used)))
    return out


def sd_single_file_state(weights: StableDiffusionWeights) -> dict[str, torch.Tensor]:
    """All networks of `weights` under their original single-file names."""
    unet = weights.unet
    state = {
        UNET_PREFIX + k: v
        for k, v in unet_to_ldm(unet.state_dict(), unet.config, linear_projection=weights.linear_projection).items()
    }
    if weights.vae is not None:
        vae = weights.vae
        state.update({ldm_vae.PREFIX + k: v for k, v in ldm_vae.to_ldm(vae.state_dict(), vae.config).items()})
    if weights.text_encoder is not None:
        te = weights.text_encoder
        if weights.openclip:
            part, prefix = ldm_clip.to_openclip(te.state_dict(), te.config), ldm_clip.OPENCLIP_PREFIX
        else:
            part, prefix = ldm_clip.to_ldm(te.state_dict(), te.config), ldm_clip.PREFIX
        state.update({prefix + k: v for k, v in part.items()})
    return state


def save_sd_single_file(weights: StableDiffusionWeights, path: str | os.PathLike) -> Path:
    """Write the networks as one original-layout single-file checkpoint (.safetensors)."""
    return save_safetensors(sd_single_file_state(weights), path, metadata={"format": "pt", "written_by": "t2i"})
