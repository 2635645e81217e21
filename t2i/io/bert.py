"""transformers `BertModel` <-> t2i `Bert` (Devlin et al. 2019): an explicit two-way key map and folder I/O."""

from __future__ import annotations

import os

import torch

from t2i.io.keymap import Rename, from_layout, renames, to_layout
from t2i.io.weights import load_into, read_model_folder
from t2i.nn.bert import Bert, BertConfig

WEIGHTS_NAME = "model.safetensors"
HF_PREFIX = "bert."  # BertForMaskedLM & co. keep the encoder under it; a bare BertModel does not
# non-persistent position_ids, and the [CLS] pooler that mean pooling never uses
IGNORED = ("position_ids", "token_type_ids", "pooler.dense.weight", "pooler.dense.bias")


def transformers_table(cfg: BertConfig, prefix: str = "") -> list[Rename]:
    """Every t2i Bert tensor and its transformers BertModel name(s) behind `prefix`."""
    e = f"{prefix}embeddings"
    rows = [
        Rename("token_embedding.weight", (f"{e}.word_embeddings.weight",)),
        Rename("position_embedding.weight", (f"{e}.position_embeddings.weight",)),
        Rename("type_embedding.weight", (f"{e}.token_type_embeddings.weight",)),
        *renames("embed_norm", f"{e}.LayerNorm"),
    ]
    for i in range(cfg.layers):
        ours, theirs = f"blocks.{i}", f"{prefix}encoder.layer.{i}"
        a = f"{theirs}.attention"
        rows += renames(f"{ours}.attn.to_qkv", (f"{a}.self.query", f"{a}.self.key", f"{a}.self.value"))
        rows += renames(f"{ours}.attn.to_out", f"{a}.output.dense")
        rows += renames(f"{ours}.ln1", f"{a}.output.LayerNorm")
        rows += renames(f"{ours}.mlp.fc1", f"{theirs}.intermediate.dense")
        rows += renames(f"{ours}.mlp.fc2", f"{theirs}.output.dense")
        rows += renames(f"{ours}.ln2", f"{theirs}.output.LayerNorm")
    return rows


def from_transformers(state: dict[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """BertModel tensors (or a BERT head model's, under `bert.`) -> t2i state; the pooler is dropped."""
    prefix = HF_PREFIX if any(k.startswith(HF_PREFIX) for k in state) else ""
    with torch.device("meta"):  # the shapes the config needs, named in any error
        expected = {k: v.shape for k, v in Bert(config).state_dict().items()}
    return from_layout(transformers_table(config, prefix), state, expected=expected, ignore=IGNORED, where="BERT")


def to_transformers(state: dict[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """t2i state -> BertModel tensors (load into `BertModel(config, add_pooling_layer=False)`)."""
    return to_layout(transformers_table(config), state, where="t2i BERT")


def load_transformers_bert(folder: str | os.PathLike) -> Bert:
    """A t2i Bert from a transformers BERT folder (config.json + model.safetensors)."""
    config, state = read_model_folder(folder, WEIGHTS_NAME)
    cfg = BertConfig.from_hf_config(config)
    model = Bert(cfg)
    load_into(model, from_transformers(state, cfg), where=str(folder))
    return model
