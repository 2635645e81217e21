"""transformers `T5EncoderModel` <-> t2i `T5Encoder` (Raffel et al. 2020): an explicit two-way key map and
folder I/O (config.json + model.safetensors, as `T5EncoderModel.save_pretrained` writes)."""

from __future__ import annotations

import os

import torch

from t2i.io.keymap import Rename, from_layout, renames, to_layout
from t2i.io.weights import load_into, read_model_folder
from t2i.nn.t5 import T5Config, T5Encoder

WEIGHTS_NAME = "model.safetensors"
EMBEDDING = ("shared.weight", "encoder.embed_tokens.weight")  # tied: a checkpoint may hold either or both


def transformers_table(cfg: T5Config) -> list[Rename]:
    """Every t2i T5Encoder tensor but the token embedding, and its transformers T5EncoderModel name."""
    rows = [Rename("relative_bias.weight", ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",))]
    for i in range(cfg.layers):
        ours, theirs = f"blocks.{i}", f"encoder.block.{i}.layer"
        rows += renames(f"{ours}.ln1", f"{theirs}.0.layer_norm", ("weight",))
        for p in ("q", "k", "v", "o"):
            rows += renames(f"{ours}.attn.{p}", f"{theirs}.0.SelfAttention.{p}", ("weight",))
        rows += renames(f"{ours}.ln2", f"{theirs}.1.layer_norm", ("weight",))
        ff = f"{theirs}.1.DenseReluDense"
        if cfg.feed_forward == "gated-gelu":
            rows += renames(f"{ours}.mlp.gate", f"{ff}.wi_0", ("weight",)) + renames(f"{ours}.mlp.wi", f"{ff}.wi_1", ("weight",))
        else:
            rows += renames(f"{ours}.mlp.wi", f"{ff}.wi", ("weight",))
        rows += renames(f"{ours}.mlp.wo", f"{ff}.wo", ("weight",))
    return rows + renames("final_norm", "encoder.final_layer_norm", ("weight",))


def from_transformers(state: dict[str, torch.Tensor], config: T5Config) -> dict[str, torch.Tensor]:
    """T5EncoderModel tensors -> t2i state (the tied embedding read from whichever name holds it)."""
    state = dict(state)
    embedding = [state.pop(k) for k in EMBEDDING if k in state]
    if not embedding:
        raise ValueError(f"T5: checkpoint does not fit: missing tensors (1): {EMBEDDING[0]}")
    with torch.device("meta"):  # the shapes the config needs, named in any error
        expected = {k: v.shape for k, v in T5Encoder(config).state_dict().items()}
    out = from_layout(transformers_table(config), state, expected=expected, where="T5")
    if tuple(embedding[0].shape) != tuple(expected["token_embedding.weight"]):
        raise ValueError(f"T5: checkpoint does not fit: tensor '{EMBEDDING[0]}' {tuple(embedding[0].shape)}, the model "
                         f"expects {tuple(expected['token_embedding.weight'])}")
    return {"token_embedding.weight": embedding[0], **out}


def to_transformers(state: dict[str, torch.Tensor], config: T5Config) -> dict[str, torch.Tensor]:
    """t2i state -> T5EncoderModel tensors (both tied embedding names, as its state_dict has them)."""
    state = dict(state)
    embedding = state.pop("token_embedding.weight")
    return {**{k: embedding for k in EMBEDDING}, **to_layout(transformers_table(config), state, where="t2i T5")}


def load_transformers_t5(folder: str | os.PathLike) -> T5Encoder:
    """A t2i T5Encoder from a transformers T5EncoderModel / T5 folder (config.json + model.safetensors);
    a full T5 (encoder-decoder) checkpoint's decoder tensors are ignored."""
    config, state = read_model_folder(folder, WEIGHTS_NAME)
    cfg = T5Config.from_hf_config(config)
    model = T5Encoder(cfg)
    state = {k: v for k, v in state.items() if not k.startswith(("decoder.", "lm_head."))}
    load_into(model, from_transformers(state, cfg), where=str(folder))
    return model.eval()
