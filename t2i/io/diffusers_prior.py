"""diffusers `PriorTransformer` (Karlo's unCLIP prior, Ramesh et al. 2022 sec. 2.2) <-> t2i `Prior`."""

from __future__ import annotations

import os
from typing import Any

import torch

from t2i.io.keymap import Rename, from_layout, renames
from t2i.io.weights import load_model_folder
from t2i.nn.prior import EXTRA_TOKENS, Prior, PriorConfig
from t2i.nn.transformer import TransformerConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def prior_config_from_diffusers(d: dict[str, Any]) -> PriorConfig:
    """A PriorTransformer config.json dict -> PriorConfig; refuses what t2i's prior does not compute."""
    heads, head_dim = d.get("num_attention_heads", 32), d.get("attention_head_dim", 64)
    width, dim = heads * head_dim, d.get("embedding_dim", 768)
    if d.get("additional_embeddings", 4) != EXTRA_TOKENS or d.get("added_emb_type", "prd") != "prd":
        raise ValueError("only PriorTransformers with the learned final query (added_emb_type 'prd', "
                         "additional_embeddings 4) map onto t2i's prior")
    if d.get("encoder_hid_proj_type", "linear") != "linear" or d.get("time_embed_act_fn", "silu") != "silu":
        raise ValueError("the prior needs text token states (encoder_hid_proj_type 'linear') and a SiLU time MLP")
    if (d.get("time_embed_dim") or width) != width or (d.get("clip_embed_dim") or dim) != dim:
        raise ValueError("time_embed_dim must equal the width and clip_embed_dim the embedding_dim")
    return PriorConfig(dim=dim, token_dim=dim, text_dim=d.get("embedding_proj_dim") or dim,
                       max_tokens=d.get("num_embeddings", 77),
                       transformer=TransformerConfig(width=width, layers=d.get("num_layers", 20), heads=heads,
                                                     activation="gelu", causal=True),
                       text_norm=d.get("embedding_proj_norm_type") == "layer", norm_in=d.get("norm_in_type") == "layer")


def diffusers_table(cfg: PriorConfig) -> list[Rename]:
    """Every t2i Prior tensor and its PriorTransformer name(s)."""
    rows = renames("time.linear_1", "time_embedding.linear_1") + renames("time.linear_2", "time_embedding.linear_2")
    rows += renames("proj_in", "proj_in") + renames("proj_text", "embedding_proj")
    rows += renames("proj_context", "encoder_hidden_states_proj")
    rows += [Rename("position", ("positional_embedding",)), Rename("query", ("prd_embedding",)),
             Rename("embed_mean", ("clip_mean",)), Rename("embed_std", ("clip_std",))]
    rows += renames("text_norm", "embedding_proj_norm") if cfg.text_norm else []
    rows += renames("norm_in", "norm_in") if cfg.norm_in else []
    for i in range(cfg.transformer.layers):
        ours, theirs = f"transformer.blocks.{i}", f"transformer_blocks.{i}"
        a = f"{theirs}.attn1"
        rows += renames(f"{ours}.ln1", f"{theirs}.norm1") + renames(f"{ours}.ln2", f"{theirs}.norm3")
        rows += renames(f"{ours}.attn.to_qkv", (f"{a}.to_q", f"{a}.to_k", f"{a}.to_v"))
        rows += renames(f"{ours}.attn.to_out", f"{a}.to_out.0")
        rows += renames(f"{ours}.mlp.fc1", f"{theirs}.ff.net.0.proj") + renames(f"{ours}.mlp.fc2", f"{theirs}.ff.net.2")
    return rows + renames("norm_out", "norm_out") + renames("proj_out", "proj_to_clip_embeddings")


def from_diffusers(state: dict[str, torch.Tensor], config: PriorConfig) -> dict[str, torch.Tensor]:
    """PriorTransformer tensors -> t2i Prior state (every missing or misshapen tensor named)."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Prior(config).state_dict().items()}
    return from_layout(diffusers_table(config), state, expected=expected, where="PriorTransformer")


def load_diffusers_prior(folder: str | os.PathLike) -> Prior:
    """A t2i Prior from a diffusers prior/ folder (config.json + safetensors)."""
    return load_model_folder(folder, WEIGHTS_NAME, lambda c: Prior(prior_config_from_diffusers(c)), from_diffusers)
