"""BERT's uncased WordPiece tokenizer (Devlin et al. 2019), read from a vocab.txt; no transformers needed.

Basic tokenization as BertTokenizer does it (clean control characters, space out CJK
ideographs, lower-case, strip accents, split on whitespace and punctuation), then greedy
longest-match-first word pieces with "##" continuations; a word with no split is [UNK].
Sequences are [CLS] pieces [SEP], cut to max_length and padded with [PAD].
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import torch

CLS, SEP, PAD, UNK = "[CLS]", "[SEP]", "[PAD]", "[UNK]"
MAX_WORD_CHARS = 100  # longer words are [UNK], as in BertTokenizer


def _is_punctuation(ch: str) -> bool:
    """ASCII symbols count as punctuation too (BERT treats "$" or "^" as their own token)."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                             (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                             (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def _clean(text: str) -> str:
    """Drop NUL, U+FFFD and control characters; every whitespace becomes a space; CJK ideographs spaced out."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp in (0, 0xFFFD) or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    return "".join(out)


def basic_tokens(text: str) -> list[str]:
    """Lower-cased, accent-stripped words and single punctuation marks."""
    text = unicodedata.normalize("NFD", _clean(text).lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    tokens: list[str] = []
    for word in text.split():
        start = len(tokens)
        for ch in word:
            if _is_punctuation(ch):
                tokens.append(ch)
                start = len(tokens)
            elif len(tokens) > start:
                tokens[-1] += ch
            else:
                tokens.append(ch)
    return tokens


class WordPieceTokenizer:
    """Uncased BERT WordPiece: captions -> ids (B, L) with [CLS] ... [SEP] [PAD]..., and a mask (B, L)."""

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        missing = [t for t in (CLS, SEP, PAD, UNK) if t not in self.ids]
        if missing:
            raise ValueError(f"not a BERT vocabulary: it lacks {', '.join(missing)}")
        self.cls_id, self.sep_id, self.pad_id, self.unk_id = (self.ids[t] for t in (CLS, SEP, PAD, UNK))

    def __len__(self) -> int:
        return len(self.vocab)

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike) -> "WordPieceTokenizer":
        """From BERT's vocab.txt: one token per line, the line number is its id."""
        return cls(Path(path).read_text(encoding="utf-8").splitlines())

    def word_pieces(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word; [UNK] when it cannot be split."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return pieces

    def tokenize(self, text: str) -> list[int]:
        """Ids of a text's word pieces, without [CLS] / [SEP]."""
        return [i for word in basic_tokens(text) for i in self.word_pieces(word)]

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, max_length) long and mask (B, max_length) bool, True = real token (incl. [CLS], [SEP])."""
        if max_length < 2:
            raise ValueError(f"max_length = {max_length}: must leave room for [CLS] and [SEP]")
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            seq = [self.cls_id, *self.tokenize(text)[: max_length - 2], self.sep_id]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids, ids != self.pad_id

    def to_json(self) -> str:
        return json.dumps({"kind": "wordpiece", "vocab": self.vocab})

    @classmethod
    def from_json(cls, text: str) -> "WordPieceTokenizer":
        d = json.loads(text)
        if d.get("kind") != "wordpiece":
            raise ValueError("not a t2i WordPiece tokenizer file (expected kind 'wordpiece')")
        return cls(d["vocab"])
