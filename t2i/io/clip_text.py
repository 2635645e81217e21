"""transformers `CLIPTextModel` (and `CLIPTextModelWithProjection`) <-> t2i `TextTransformer`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from t2i.io.keymap import Rename, from_layout, renames, to_layout
from t2i.io.weights import load_model_folder, write_model_folder
from t2i.nn.transformer import TextTransformer, TextTransformerConfig, TransformerConfig

WEIGHTS_NAME = "model.safetensors"
HF_PREFIX = "text_model."  # transformers < 5 and every hub file keep CLIPTextModel's tensors under it
_ACT_FROM_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
LEGACY_EOS = 2  # configs with eos_token_id == 2 pool at the highest token id (transformers' pre-#24773 rule)


def clip_config_from_transformers(d: dict[str, Any], *, with_projection: bool | None = None) -> TextTransformerConfig:
    """A transformers CLIPTextConfig dict -> TextTransformerConfig; pooling follows transformers' EOS rule.

    `with_projection` defaults to whether d["architectures"] names CLIPTextModelWithProjection.
    """
    if with_projection is None:
        with_projection = "CLIPTextModelWithProjection" in (d.get("architectures") or ())
    act = d.get("hidden_act", "quick_gelu")
    if act not in _ACT_FROM_HF:
        raise ValueError(f"unsupported CLIP hidden_act {act!r}; t2i knows {sorted(_ACT_FROM_HF)}")
    eos = d.get("eos_token_id", LEGACY_EOS)
    width = d.get("hidden_size", 512)
    return TextTransformerConfig(
        vocab_size=d.get("vocab_size", 49408),
        max_length=d.get("max_position_embeddings", 77),
        transformer=TransformerConfig(
            width=width,
            layers=d.get("num_hidden_layers", 12),
            heads=d.get("num_attention_heads", 8),
            mlp_dim=d.get("intermediate_size", 2048),
            activation=_ACT_FROM_HF[act],
            causal=True,
            eps=d.get("layer_norm_eps", 1e-5),
        ),
        pool="argmax" if eos == LEGACY_EOS else "eos",
        eos_token_id=eos,
        proj_dim=d.get("projection_dim", 512) if with_projection else 0,
    )


def clip_config_to_transformers(cfg: TextTransformerConfig) -> dict[str, Any]:
    """TextTransformerConfig -> CLIPTextConfig kwargs; refuses what CLIPTextModel cannot express."""
    t = cfg.transformer
    if cfg.pool not in ("eos", "argmax") or not t.causal or not t.qkv_bias:
        raise ValueError("only causal, qkv-biased text transformers pooled at EOS map to transformers' CLIPTextModel")
    d = {
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_length,
        "hidden_size": t.width,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "intermediate_size": t.hidden,
        "hidden_act": _ACT_TO_HF[t.activation],
        "layer_norm_eps": t.eps,
        "projection_dim": cfg.proj_dim or 512,
        "eos_token_id": LEGACY_EOS if cfg.pool == "argmax" else cfg.eos_token_id,
    }
    if cfg.pool == "argmax":
        d.update(bos_token_id=0, pad_token_id=1)  # as in openai/clip-vit-large-patch14's config
    return d


def transformers_table(cfg: TextTransformerConfig, prefix: str = "") -> list[Rename]:
    """Every t2i TextTransformer tensor and its transformers name(s) (CLIPTextModel keys behind `prefix`)."""
    p = prefix
    rows = [
        Rename("token_embedding.weight", (f"{p}embeddings.token_embedding.weight",)),
        Rename("position_embedding", (f"{p}embeddings.position_embedding.weight",)),
    ]
    for i in range(cfg.transformer.layers):
        ours, theirs = f"transformer.blocks.{i}", f"{p}encoder.layers.{i}"
        a = f"{theirs}.self_attn"
        rows += renames(f"{ours}.ln1", f"{theirs}.layer_norm1")
        rows += renames(f"{ours}.attn.to_qkv", (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"))
        rows += renames(f"{ours}.attn.to_out", f"{a}.out_proj")
        rows += renames(f"{ours}.ln2", f"{theirs}.layer_norm2")
        rows += renames(f"{ours}.mlp.fc1", f"{theirs}.mlp.fc1") + renames(f"{ours}.mlp.fc2", f"{theirs}.mlp.fc2")
    rows += renames("final_norm", f"{p}final_layer_norm")
    if cfg.proj_dim:
        rows.append(Rename("proj.weight", ("text_projection.weight",)))
    return rows


def expected_shapes(cfg: TextTransformerConfig) -> dict[str, torch.Size]:
    """t2i tensor name -> shape for this config (built on the meta device)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in TextTransformer(cfg).state_dict().items()}


def from_transformers(state: dict[str, torch.Tensor], config: TextTransformerConfig) -> dict[str, torch.Tensor]:
    """CLIPTextModel(WithProjection) tensors, with or without the `text_model.` prefix -> t2i state."""
    prefix = HF_PREFIX if any(k.startswith(HF_PREFIX) for k in state) else ""
    table = transformers_table(config, prefix)
    return from_layout(table, state, expected=expected_shapes(config), ignore=("position_ids",), where="CLIP text")


def to_transformers(
    state: dict[str, torch.Tensor], config: TextTransformerConfig, prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """t2i state -> transformers tensors; default prefix: what the installed transformers' module expects.

    transformers >= 5 keeps CLIPTextModel's tensors unprefixed in memory and
    CLIPTextModelWithProjection's under `text_model.`; files on disk use `text_model.` for both.
    """
    if prefix is None:
        prefix = HF_PREFIX if config.proj_dim or _transformers_major() < 5 else ""
    return to_layout(transformers_table(config, prefix), state, where="t2i CLIP text")


def _transformers_major() -> int:
    try:
        import transformers
    except ImportError:
        return 5
    return int(transformers.__version__.split(".")[0])


def load_transformers_clip(folder: str | os.PathLike) -> TextTransformer:
    """Build a t2i TextTransformer from a transformers CLIP text folder (config.json + model.safetensors)."""
    return load_model_folder(folder, WEIGHTS_NAME, lambda c: TextTransformer(clip_config_from_transformers(c)),
                             from_transformers)


def save_transformers_clip(model: TextTransformer, folder: str | os.PathLike) -> Path:
    """Write a t2i TextTransformer as a folder CLIPTextModel(WithProjection).from_pretrained reads."""
    arch = "CLIPTextModelWithProjection" if model.config.proj_dim else "CLIPTextModel"
    config = {"architectures": [arch], "model_type": "clip_text_model", **clip_config_to_transformers(model.config)}
    state = to_transformers(model.state_dict(), model.config, prefix=HF_PREFIX)
    return write_model_folder(folder, config, state, WEIGHTS_NAME, metadata={"format": "pt"})
