"""The t2i system folder: system.json (which system, its layout version, name and config) and one
safetensors file per part, the text encoder with its tokenizer. Sampling settings, prompt encoding
and images are re-exported from the floors that define them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2i.config import check_fields  # noqa: F401  (re-exported)
from t2i.diffusion.config import SamplingConfig, ScheduleConfig  # noqa: F401  (re-exported)
from t2i.diffusion.sampling import mask_blend  # noqa: F401  (re-exported)
from t2i.encoders.clip_tokenizer import CLIPTokenizer
from t2i.encoders.registry import (TEXT_ENCODERS, TextConfig, TokenizedTextEncoder,  # noqa: F401  (re-exported)
                                   build_text_encoder, encode_prompts)
from t2i.encoders.tokenizer import WordTokenizer
from t2i.io.images import (StepBar, image_grid, image_to_tensor, labelled_images, mask_to_tensor,  # noqa: F401
                           save_png, tensor_to_images)


def write_system_json(folder: Path, system: str, fmt: int, name: str, config: Any) -> None:
    """system.json: which system class reads the folder, its layout version, name and config."""
    meta = {"system": system, "format": fmt, "name": name, "config": config.to_dict()}
    (folder / "system.json").write_text(json.dumps(meta, indent=2))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (system.json, model_index.json, ...), or a one-line ValueError."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a JSON object (got a {type(meta).__name__})")
    return meta


def read_system_json(folder: Path, system: str, fmt: int) -> dict[str, Any]:
    """The system.json `write_system_json` wrote, checked to be this system's layout version."""
    meta = read_json_object(folder / "system.json")
    if meta.get("system") != system or meta.get("format") != fmt:
        raise ValueError(f"{folder}: not a t2i {system} folder of format {fmt} (system.json says "
                         f"{meta.get('system')!r}, format {meta.get('format')!r})")
    return meta


def read_system(folder: Path, system: str, fmt: int, config_cls: type) -> tuple[Any, str]:
    """(config, saved name) of a t2i `system` folder: system.json checked to be this system's layout
    version and its config read by `config_cls.from_dict` (a missing, unknown or wrongly typed field named
    in one line)."""
    meta = read_system_json(folder, system, fmt)
    try:
        config = config_cls.from_dict(meta["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{folder / 'system.json'}: {str(e).splitlines()[0] if str(e) else repr(e)}") from None
    return config, str(meta.get("name", system))


def system_folder(name_or_path: Any) -> Path | None:
    """The t2i system folder (system.json) a path or a shipped system's name points to, else None."""
    from t2i.io.weights import system_folder as find

    return find(name_or_path)


def save_module(module: nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """A module's state as one safetensors file (shards + index above 16 MiB); floating tensors cast to `dtype`
    when given."""
    from t2i.io.weights import save_sharded

    sd = module.state_dict()
    save_sharded(sd if dtype is None else {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                 path)


def load_module(module: nn.Module, path: Path) -> None:
    """Load a file written by `save_module` (cast back to the module's dtype)."""
    from t2i.io.weights import load_into, load_sharded

    load_into(module, load_sharded(path), where=str(path))


def save_parts(folder: Path, parts: dict[str, nn.Module], dtype: torch.dtype | None = None) -> Path:
    """<folder>/<name>.safetensors for each part (the folder made first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in parts.items():
        save_module(module, folder / f"{name}.safetensors", dtype)
    return folder


def load_parts(folder: Path, parts: dict[str, nn.Module]) -> None:
    """Load the files `save_parts` wrote."""
    for name, module in parts.items():
        load_module(module, folder / f"{name}.safetensors")


def save_text_encoder(text: TextConfig, encoder: nn.Module, folder: Path, dtype: torch.dtype | None = None) -> None:
    """text_encoder.safetensors and the tokenizer (tokenizer.json, or tokenizer/ for CLIP BPE) into folder;
    nothing for MiniLM, whose weights and vocabulary are read from the installed package."""
    if not TEXT_ENCODERS[text.kind].trained:
        return
    save_module(encoder.transformer, folder / "text_encoder.safetensors", dtype)
    if text.kind == "clip":
        encoder.tokenizer.save(folder / "tokenizer")
    else:
        (folder / "tokenizer.json").write_text(encoder.tokenizer.to_json())


def read_tokenizer(text: TextConfig, folder: Path) -> Any:
    """The tokenizer `save_text_encoder` wrote (None for MiniLM: the package brings its own)."""
    if text.kind == "clip":
        return CLIPTokenizer.from_folder(folder / "tokenizer")
    return WordTokenizer.from_json((folder / "tokenizer.json").read_text()) if text.kind == "word" else None


def load_text_encoder(text: TextConfig, folder: Path) -> nn.Module:
    """The text encoder `save_text_encoder` wrote: built around its tokenizer, its weights loaded."""
    encoder = build_text_encoder(text, read_tokenizer(text, folder))
    if TEXT_ENCODERS[text.kind].trained:
        load_module(encoder.transformer, folder / "text_encoder.safetensors")
    return encoder


def save_clip(clip: nn.Module, folder: Path) -> None:
    """A ShapesWorld CLIP's word tokenizer into folder (its weights go with the system's parts)."""
    (folder / "tokenizer.json").write_text(clip.tokenizer.to_json())


def clip_home(folder: Path, clip_from: str = "") -> Path:
    """The folder holding a system's CLIP (clip.safetensors, tokenizer.json): its own, or that of the system
    `clip_from` names, whose CLIP it shares instead of storing a second copy."""
    if not clip_from:
        return folder
    home = system_folder(clip_from)
    if home is None or not (home / "tokenizer.json").is_file():
        raise ValueError(f"the CLIP is shared from {clip_from!r}, which is not an installed system with a CLIP")
    return home


def load_clip(config: Any, folder: Path) -> nn.Module:
    """The ShapesWorld CLIP of `config` with the tokenizer `save_clip` wrote (weights loaded with the parts)."""
    from t2i.encoders.clip import CLIPModel

    return CLIPModel(config, WordTokenizer.from_json((folder / "tokenizer.json").read_text()))
