"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), read from a `vocab.json` + `merges.txt`
folder as diffusers / transformers save it, with no dependency beyond the standard library.

Text is NFC-normalised, whitespace collapsed and lower-cased, split into words, mapped to
printable byte characters (GPT-2's table) and merged by rank with "</w>" ending each word.
Letters and numbers are matched with `re` classes ([^\\W\\d_] and \\d), which agree with
CLIP's \\p{L} / \\p{N} on the scripts prompts are written in.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch

_WORDS = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a `tokenizers` BPE file, as CLIP's tokenizer saves it."""
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise ValueError(f"{path}: not a CLIP byte-level BPE tokenizer")
    return model["vocab"], [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]


class CLIPTokenizer:
    """Encode prompts to fixed-length id tensors: [bos] tokens [eos] [pad ...]."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], *, max_length: int = 77,
                 bos_token: str = "<|startoftext|>", eos_token: str = "<|endoftext|>",
                 pad_token: str = "<|endoftext|>", unk_token: str = "<|endoftext|>"):
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.max_length = max_length
        for name, tok in [("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)]:
            if tok not in vocab:
                raise ValueError(f"the {name} token {tok!r} is not in the vocabulary")
        self.bos_id, self.eos_id = vocab[bos_token], vocab[eos_token]
        self.pad_id, self.unk_id = vocab[pad_token], vocab[unk_token]
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_folder(cls, folder: str | Path) -> "CLIPTokenizer":
        """Read `vocab.json`, `merges.txt` (or the `tokenizer.json` transformers >= 5 writes instead) and
        (optionally) `tokenizer_config.json` / `special_tokens_map.json` from a tokenizer folder."""
        folder = Path(folder)
        if not (folder / "vocab.json").is_file() and (folder / "tokenizer.json").is_file():
            vocab, merges = _read_tokenizer_json(folder / "tokenizer.json")
        else:
            for name in ("vocab.json", "merges.txt"):
                if not (folder / name).is_file():
                    raise FileNotFoundError(f"tokenizer folder {folder} has no {name} (nor a tokenizer.json)")
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        options: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = folder / name
            if path.is_file():
                config = json.loads(path.read_text(encoding="utf-8"))
                for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                    tok = config.get(key)
                    if isinstance(tok, dict):
                        tok = tok.get("content")
                    if isinstance(tok, str):
                        options[key] = tok
                if isinstance(config.get("model_max_length"), int) and config["model_max_length"] < 10**6:
                    options["max_length"] = config["model_max_length"]
        return cls(vocab, merges, **options)

    def save(self, folder: str | Path) -> Path:
        """Write vocab.json, merges.txt and tokenizer_config.json, as transformers' CLIPTokenizer saves them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        merges = sorted(self.ranks, key=self.ranks.get)
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                           encoding="utf-8")
        names = {i: w for w, i in self.vocab.items()}
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.max_length,
                  "bos_token": names[self.bos_id], "eos_token": names[self.eos_id], "pad_token": names[self.pad_id],
                  "unk_token": names[self.unk_id]}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                                      encoding="utf-8")
        return folder

    def _bpe(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, _ = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[_], parts[_ + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without bos / eos / padding."""
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
        byte_map = bytes_to_unicode()
        ids = []
        for word in _WORDS.findall(text):
            if word in ("<|startoftext|>", "<|endoftext|>"):
                ids.append(self.vocab[word])
                continue
            for piece in self._bpe("".join(byte_map[b] for b in word.encode("utf-8"))):
                ids.append(self.vocab.get(piece, self.unk_id))
        return ids

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        """(B, max_length) ids: truncated to fit bos + eos, padded with the pad token."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = torch.full((len(prompts), self.max_length), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = [self.bos_id] + self.tokenize(prompt)[: self.max_length - 2] + [self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
