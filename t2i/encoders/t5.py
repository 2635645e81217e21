"""A frozen T5 encoder from a user's own checkpoint (Imagen's text encoder, Saharia et al. 2022).

The folder is what transformers' `T5EncoderModel.save_pretrained` (plus the fast tokenizer's
`save_pretrained`) writes: config.json, model.safetensors and tokenizer.json. Token states are the
conditioning; the pooled vector is their mean over real tokens (Imagen pools T5's states so)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2i.config import Config
from t2i.encoders.minilm import mean_pool
from t2i.nn.t5 import T5Encoder


@dataclass(frozen=True)
class T5TextConfig(Config):
    """Where the checkpoint is and how captions are cut."""

    folder: str = ""  # a T5EncoderModel folder: config.json, model.safetensors, tokenizer.json
    max_length: int = 64  # tokens including the closing </s>

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or not 2 <= self.max_length <= 4096:
            raise ValueError(f"max_length = {self.max_length!r}: must be an integer in [2, 4096]")


class T5Tokenizer:
    """A `tokenizers` tokenizer.json (T5TokenizerFast's), ids cut and right-padded to max_length."""

    def __init__(self, tokenizer: Any, max_length: int, pad_id: int = 0):
        self.tokenizer, self.max_length, self.pad_id = tokenizer, max_length, pad_id

    @classmethod
    def from_file(cls, path: Path, max_length: int) -> "T5Tokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("the T5 text encoder reads tokenizer.json with the 'tokenizers' package: "
                              "`pip install tokenizers`") from None
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent}: no tokenizer.json (save the T5 fast tokenizer into the folder)")
        return cls(Tokenizer.from_file(str(path)), max_length)

    def to_json(self) -> str:
        """The tokenizer.json text (a training run keeps it beside its checkpoints)."""
        return self.tokenizer.to_str()

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, max_length), mask (B, max_length) bool): each text's ids, the last kept one its own."""
        rows = [self.ids(t) for t in texts]
        rows = [r if len(r) <= self.max_length else r[:self.max_length - 1] + r[-1:] for r in rows]  # keep </s>
        ids = torch.full((len(rows), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), self.max_length, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r, dtype=torch.long), True
        return ids, mask


class T5TextEncoder(nn.Module):
    """Captions -> (pooled (B, D), tokens (B, L, D), mask (B, L)); frozen, always in eval mode."""

    def __init__(self, tokenizer: T5Tokenizer, encoder: T5Encoder):
        super().__init__()
        self.tokenizer, self.encoder = tokenizer, encoder.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_folder(cls, config: T5TextConfig) -> "T5TextEncoder":
        from t2i.io.t5 import load_transformers_t5

        if not config.folder:
            raise ValueError("the t5 text encoder needs its checkpoint folder: text = {folder = 'PATH'}")
        folder = Path(config.folder)
        return cls(T5Tokenizer.from_file(folder / "tokenizer.json", config.max_length), load_transformers_t5(folder))

    @property
    def width(self) -> int:
        return self.encoder.config.width

    def train(self, mode: bool = True) -> "T5TextEncoder":
        """Stay in eval mode whatever the parent asks: the encoder is frozen."""
        return super().train(False)

    def prompt_fit(self, text: str) -> tuple[int, int, list[str]]:
        """(tokens the text needs with </s>, tokens read, words it cannot spell: none, SentencePiece spells all)."""
        return len(self.tokenizer.ids(text)), self.tokenizer.max_length, []

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.encoder.token_embedding.weight.device
        ids, mask = (t.to(device) for t in self.tokenizer(captions))  # (B, L), (B, L)
        tokens = self.encoder(ids, mask)  # (B, L, D)
        return mean_pool(tokens, mask), tokens, mask
