"""A trainable text encoder: word tokenizer + the transformer of t2i/nn, captions -> (pooled, tokens, mask)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from t2i.config import Config
from t2i.encoders.tokenizer import WordTokenizer, split_words
from t2i.nn.transformer import TextTransformer, TextTransformerConfig, TransformerConfig


@dataclass(frozen=True)
class TextEncoderConfig(Config):
    """Size of a small bidirectional text transformer trained with the diffusion model (as in GLIDE)."""

    width: int = 128
    layers: int = 2
    heads: int = 4
    max_length: int = 32
    causal: bool = False
    pool: str = "eos"  # eos | mean | last

    def __post_init__(self) -> None:
        for key in ("width", "layers", "heads", "max_length"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key} = {getattr(self, key)!r}: must be an integer >= 1")
        if self.width % self.heads:
            raise ValueError(f"width = {self.width}: must be divisible by heads = {self.heads}")
        if self.pool not in ("eos", "mean", "last"):
            raise ValueError(f"pool = {self.pool!r}: must be eos, mean or last")

    def transformer_config(self, tokenizer: WordTokenizer) -> TextTransformerConfig:
        return TextTransformerConfig(
            vocab_size=len(tokenizer), max_length=self.max_length, pool=self.pool, eos_token_id=tokenizer.eos_id,
            transformer=TransformerConfig(width=self.width, layers=self.layers, heads=self.heads, causal=self.causal),
        )


class TextEncoder(nn.Module):
    """Captions -> (pooled (B, D), tokens (B, L, D), mask (B, L)); GLIDE-style jointly trained encoder."""

    def __init__(self, tokenizer: WordTokenizer, config: TextEncoderConfig):
        super().__init__()
        self.tokenizer, self.config = tokenizer, config
        self.transformer = TextTransformer(config.transformer_config(tokenizer))

    @property
    def width(self) -> int:
        return self.config.width

    def prompt_fit(self, text: str) -> tuple[int, int, list[str]]:
        """(tokens the text needs, tokens read, words outside the vocabulary)."""
        words = split_words(text)
        return len(words), self.config.max_length - 1, [w for w in words if w not in self.tokenizer.ids]

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.transformer.token_embedding.weight.device
        ids, mask = self.tokenizer.encode(captions, self.config.max_length)  # (B, L), (B, L)
        return self.transformer(ids.to(device), mask.to(device))
