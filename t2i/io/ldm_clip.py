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


def _causal_clip(embedding: torch.Tensor, positions: torch.Tensor, layers: int, mlp_dim: int, activation: str,
                 heads: int | None) -> TextTransformerConfig:
    """A CLIP text tower's config from its token embedding (vocab, width) and position table: causal
    attention, argmax (end-of-text) pooling, 64-wide heads unless `heads` says."""
    vocab, width = embedding.shape
    transformer = TransformerConfig(width=width, layers=layers, heads=heads or width // HEAD_DIM, mlp_dim=mlp_dim,
                                    activation=activation, causal=True)
    return TextTransformerConfig(vocab_size=vocab, max_length=positions.shape[0], transformer=transformer,
                                 pool="argmax", eos_token_id=49407)


def clip_config_from_ldm(state: dict[str, torch.Tensor], *, heads: int | None = None) -> TextTransformerConfig:
    """Infer the SD 1.x text encoder config from its tensors (prefix stripped): OpenAI CLIP, quick_gelu, argmax pooling."""
    p = HF_PREFIX if any(k.startswith(HF_PREFIX) for k in state) else ""  # very old files lack it
    try:
        return _causal_clip(state[f"{p}embeddings.token_embedding.weight"],
                            state[f"{p}embeddings.position_embedding.weight"],
                            _count_layers(state, rf"{re.escape(p)}encoder\.layers\.(\d+)\."),
                            state[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0], "quick_gelu", heads)
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
        layers = _count_layers(state, r"transformer\.resblocks\.(\d+)\.")
        return _causal_clip(state["token_embedding.weight"], state["positional_embedding"],
                            layers - 1 if penultimate else layers,
                            state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], "gelu", heads)
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
