"""Text encoders inside original Stable Diffusion single files <-> t2i `TextTransformer`.

- SD 1.x: `cond_stage_model.transformer.text_model.*`, OpenAI CLIP ViT-L/14 in transformers' names.
- SD 2.x: `cond_stage_model.model.*`, OpenCLIP ViT-H/14 (fused `in_proj_weight`, `resblocks`); SD 2
  reads the penultimate layer, so t2i keeps 23 of its 24 blocks, as diffusers does.
`t2i/io/sd_single_file.py` strips the prefix and calls these.
"""

from __future__ import annotations

import re

import torch

from t2i.io.clip_text import HF_PREFIX, expected_shapes, from_transformers, to_transformers
from t2i.io.keymap import Rename, from_layout, renames, to_layout
from t2i.nn.transformer import TextTransformerConfig, TransformerConfig

PREFIX = "cond_stage_model.transformer."  # SD 1.x
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x
HEAD_DIM = 64  # every released CLIP text tower uses 64-wide heads; shapes cannot tell the head count


def _count_layers(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def clip_config_from_ldm(state: dict[str, torch.Tensor], *, heads: int | None = None) -> TextTransformerConfig:
    """Infer the SD 1.x text encoder config from its tensors (prefix stripped): OpenAI CLIP, quick_gelu, argmax pooling."""
    p = HF_PREFIX if any(k.startswith(HF_PREFIX) for k in state) else ""  # very old files lack it
    try:
        vocab, width = state[f"{p}embeddings.token_embedding.weight"].shape
        return TextTransformerConfig(
            vocab_size=vocab,
            max_length=state[f"{p}embeddings.position_embedding.weight"].shape[0],
            transformer=TransformerConfig(
                width=width,
                layers=_count_layers(state, rf"{re.escape(p)}encoder\.layers\.(\d+)\."),
                heads=heads or width // HEAD_DIM,
                mlp_dim=state[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0],
                activation="quick_gelu",
                causal=True,
            ),
            pool="argmax",
            eos_token_id=49407,
        )
    except KeyError as e:
        raise ValueError(f"SD 1.x text encoder: cannot infer the config, tensor {e} is missing") from None


def from_ldm(state: dict[str, torch.Tensor], config: TextTransformerConfig) -> dict[str, torch.Tensor]:
    """SD 1.x `cond_stage_model.transformer.*` tensors (prefix stripped) -> t2i state."""
    return from_transformers(state, config)


def to_ldm(state: dict[str, torch.Tensor], config: TextTransformerConfig) -> dict[str, torch.Tensor]:
    """t2i state -> SD 1.x text encoder tensors (without `cond_stage_model.transformer.`)."""
    return to_transformers(state, config, prefix=HF_PREFIX)


def openclip_table(cfg: TextTransformerConfig) -> list[Rename]:
    """Every t2i TextTransformer tensor and its OpenCLIP name (prefix stripped)."""
    rows = [Rename("token_embedding.weight", ("token_embedding.weight",)), Rename("position_embedding", ("positional_embedding",))]
    for i in range(cfg.transformer.layers):
        ours, theirs = f"transformer.blocks.{i}", f"transformer.resblocks.{i}"
        rows += renames(f"{ours}.ln1", f"{theirs}.ln_1")
        rows += [Rename(f"{ours}.attn.to_qkv.weight", (f"{theirs}.attn.in_proj_weight",)),
                 Rename(f"{ours}.attn.to_qkv.bias", (f"{theirs}.attn.in_proj_bias",))]
        rows += renames(f"{ours}.attn.to_out", f"{theirs}.attn.out_proj")
        rows += renames(f"{ours}.ln2", f"{theirs}.ln_2")
        rows += renames(f"{ours}.mlp.fc1", f"{theirs}.mlp.c_fc") + renames(f"{ours}.mlp.fc2", f"{theirs}.mlp.c_proj")
    return rows + renames("final_norm", "ln_final")


def openclip_config_from_ldm(
    state: dict[str, torch.Tensor], *, penultimate: bool = True, heads: int | None = None
) -> TextTransformerConfig:
    """Infer the SD 2.x OpenCLIP text config (prefix stripped); `penultimate` drops the last block as SD 2 does."""
    try:
        vocab, width = state["token_embedding.weight"].shape
        layers = _count_layers(state, r"transformer\.resblocks\.(\d+)\.")
        return TextTransformerConfig(
            vocab_size=vocab,
            max_length=state["positional_embedding"].shape[0],
            transformer=TransformerConfig(
                width=width,
                layers=layers - 1 if penultimate else layers,
                heads=heads or width // HEAD_DIM,
                mlp_dim=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                activation="gelu",
                causal=True,
            ),
            pool="argmax",
            eos_token_id=49407,
        )
    except KeyError as e:
        raise ValueError(f"SD 2.x OpenCLIP text encoder: cannot infer the config, tensor {e} is missing") from None


def from_openclip(state: dict[str, torch.Tensor], config: TextTransformerConfig) -> dict[str, torch.Tensor]:
    """SD 2.x `cond_stage_model.model.*` tensors (prefix stripped) -> t2i state.

    Blocks past `config.transformer.layers`, `text_projection` and `logit_scale` are not part of
    SD's text conditioning and are skipped.
    """
    n = config.transformer.layers
    kept = {
        k: v
        for k, v in state.items()
        if k not in ("text_projection", "logit_scale", "attn_mask")
        and not ((m := re.match(r"transformer\.resblocks\.(\d+)\.", k)) and int(m.group(1)) >= n)
    }
    return from_layout(openclip_table(config), kept, expected=expected_shapes(config), where="OpenCLIP text")


def to_openclip(state: dict[str, torch.Tensor], config: TextTransformerConfig) -> dict[str, torch.Tensor]:
    """t2i state -> OpenCLIP text tensors (no prefix); only the blocks t2i holds are written."""
    return to_layout(openclip_table(config), state, where="t2i CLIP text")
