"""Shared pytest fixtures and helpers."""

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: tiny layers on a busy 2-core machine run ~10x faster so."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


HAS_SHIPPED_LDM = (Path(__file__).resolve().parents[1] / "t2i" / "weights" / "ldm" / "system.json").is_file()
needs_shipped_ldm = pytest.mark.skipif(not HAS_SHIPPED_LDM, reason="no shipped LDM weights in this checkout")


@pytest.fixture(scope="session")
def shipped_ldm():
    """The shipped `ldm` system, loaded once for every test that draws with it."""
    from t2i.api import load

    return load("ldm")


def write_tiny_clip_bpe(path: Path, corpus: list[str], max_length: int | None = None) -> Path:
    """Train a tiny CLIP-style byte-level BPE (vocab.json + merges.txt) on corpus into the folder path.

    Like CLIP's: words end in "</w>", <|startoftext|> and <|endoftext|> are special tokens, and the
    vocabulary holds every byte alone and as a word end. With max_length, a tokenizer_config.json
    records it as model_max_length. Needs the `tokenizers` package (importorskip it first).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    alphabet = list(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([c.lower() for c in corpus], trainer)
    tok.model.save(str(path))
    vocab = json.loads((path / "vocab.json").read_text())
    for ch in alphabet:  # CLIP's vocabulary holds every byte, alone and as a word end
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    if max_length is not None:
        (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))
    return path


@pytest.fixture(scope="session")
def tiny_clip_bpe():
    """`write_tiny_clip_bpe` as a fixture: tiny_clip_bpe(path, corpus, max_length=None) -> path."""
    return write_tiny_clip_bpe
