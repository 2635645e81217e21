"""A word-level tokenizer for small closed vocabularies such as ShapesWorld's caption grammar.

Text is lower-cased and split into words (letters, or digits); each word maps to its id, any
word outside the vocabulary to <unk>; an <eos> ends every sequence and <pad> fills the rest.
The vocabulary is saved as JSON beside the encoder's weights, so ids never shift.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

import torch

from t2i.encoders.shapes_words import (BACKGROUND_NAMES, COLOR_NAMES, GRAMMAR_WORDS, NUMBER_WORDS, PLURALS,
                                      POSITIONS, RELATION_WORDS, SHAPES, SIZE_NAMES)

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)
_WORD = re.compile(r"[a-z]+|[0-9]+")



def split_words(text: str) -> list[str]:
    """'A red circle, left.' -> ['a', 'red', 'circle', 'left']."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Words <-> ids with <pad>=0, <unk>=1, <eos>=2, then the vocabulary in the order given."""

    def __init__(self, words: Iterable[str]):
        vocab = list(SPECIALS)
        for w in words:
            if w not in vocab:
                vocab.append(w)
        self.vocab = vocab
        self.ids = {w: i for i, w in enumerate(vocab)}

    pad_id, unk_id, eos_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ids (B, max_length) long and mask (B, max_length) bool (True = real token).

        Each sequence is its words (cut to max_length - 1), then <eos>, then <pad>s.
        """
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.bool)
        for row, text in enumerate(texts):
            seq = [self.ids.get(w, self.unk_id) for w in split_words(text)][: max_length - 1] + [self.eos_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = True
        return ids, mask

    def decode(self, ids: torch.Tensor) -> str:
        """ids (L,) -> words up to the first <eos>, pads dropped."""
        words = []
        for i in ids.tolist():
            if i == self.eos_id:
                break
            if i != self.pad_id:
                words.append(self.vocab[i])
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"kind": "word", "vocab": self.vocab}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "WordTokenizer":
        d = json.loads(text)
        if d.get("kind") != "word" or list(d["vocab"][: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError("not a t2i word tokenizer file (expected kind 'word' and <pad>, <unk>, <eos> first)")
        return cls(d["vocab"][len(SPECIALS):])

    @classmethod
    def for_shapes(cls) -> "WordTokenizer":
        """The ShapesWorld vocabulary: every word its caption grammar can produce."""
        words: list[str] = list(GRAMMAR_WORDS)
        for group in (NUMBER_WORDS.values(), COLOR_NAMES, SHAPES, PLURALS.values(), SIZE_NAMES, POSITIONS,
                      RELATION_WORDS.values(), BACKGROUND_NAMES):
            for phrase in group:
                words += split_words(phrase)
        return cls(words)
