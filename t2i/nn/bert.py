"""BERT's encoder (Devlin et al. 2019): post-LN transformer blocks over word + position + token-type embeddings.

Inference only: BERT's dropout is left out, since the encoders built on it here are frozen
(MiniLM, Wang et al. 2020). The [CLS] pooler is left out too; sentence embeddings are taken by
mean pooling (Sentence-BERT, Reimers & Gurevych 2019) in `t2i.encoders.minilm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from t2i.config import Config
from t2i.nn.attention import Attention
from t2i.nn.transformer import ACTIVATIONS, MLP

_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


@dataclass(frozen=True)
class BertConfig(Config):
    """Sizes of a BERT encoder (bert-base by default)."""

    vocab_size: int = 30522
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu"  # gelu (erf) | gelu_tanh
    eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> "BertConfig":
        """From a transformers BertConfig dict (config.json); refuses what this network does not compute."""
        act = d.get("hidden_act", "gelu")
        if act not in _ACT_FROM_HF:
            raise ValueError(f"unsupported BERT hidden_act {act!r}; t2i knows {sorted(_ACT_FROM_HF)}")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported position_embedding_type {d['position_embedding_type']!r} (absolute only)")
        return cls(vocab_size=d.get("vocab_size", 30522), width=d.get("hidden_size", 768),
                   layers=d.get("num_hidden_layers", 12), heads=d.get("num_attention_heads", 12),
                   mlp_dim=d.get("intermediate_size", 3072), max_positions=d.get("max_position_embeddings", 512),
                   type_vocab_size=d.get("type_vocab_size", 2), activation=_ACT_FROM_HF[act],
                   eps=d.get("layer_norm_eps", 1e-12))


class BertBlock(nn.Module):
    """Post-LN: x = LN(x + Attn(x)), then x = LN(x + MLP(x)) (Devlin et al. 2019)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = Attention(cfg.width, heads=cfg.heads, head_dim=cfg.width // cfg.heads, qkv_bias=True)
        self.ln1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.activation)
        self.ln2 = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, mask=mask))
        return self.ln2(x + self.mlp(x))


class Bert(nn.Module):
    """Token ids (B, L) -> last hidden states (B, L, width); mask (B, L) bool, True = real token (Devlin et al. 2019)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_positions, config.width)
        self.type_embedding = nn.Embedding(config.type_vocab_size, config.width)
        self.embed_norm = nn.LayerNorm(config.width, eps=config.eps)
        self.blocks = nn.ModuleList(BertBlock(config) for _ in range(config.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                token_types: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L) long; token_types (B, L) long, default all 0 (one segment)."""
        n = ids.shape[1]
        if n > self.config.max_positions:
            raise ValueError(f"sequence of {n} tokens exceeds max_positions={self.config.max_positions}")
        types = self.type_embedding(token_types) if token_types is not None else self.type_embedding.weight[0]
        x = self.token_embedding(ids) + self.position_embedding.weight[:n] + types  # (B, L, D)
        x = self.embed_norm(x)
        for block in self.blocks:
            x = block(x, mask)
        return x
