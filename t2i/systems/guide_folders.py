"""Which guide steers a GLIDE request, and the guide folders a system folder carries: a request's guidance
type and guide (a Guide, its folder, or a log-probability callable) resolved once, guide folders read
and checked, and a system's guides copied along when it is saved.

Composition only: the guides are `t2i.systems.guides`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from t2i.diffusion.guidance import LogProb
from t2i.systems.base import load_module
from t2i.systems.guides import GUIDE_FORMAT, GUIDES, Guide, GuideConfig, guide_folder
from t2i.systems.request import GUIDANCE_TYPES


def folder_guide_kind(folder: Path) -> str | None:
    """The kind of the guide folder (its system.json says "<kind>_guide"), or None if it is no guide folder."""
    if not (folder / "system.json").is_file():
        return None
    system = str(json.loads((folder / "system.json").read_text()).get("system"))
    kind = system[:-len("_guide")] if system.endswith("_guide") else None
    return kind if kind in GUIDES else None


def check_guide_kind(where: Path, found: str | None, kind: str | None) -> None:
    """Raise a one-line ValueError unless `where` holds a guide (found), of `kind` when given."""
    what = f"a {kind} guide" if kind else "a guide"
    if found is None:
        raise ValueError(f"{where}: not {what} (a guide folder, or a noise-aware clip or classifier run); "
                         f"write one with `t2i convert RUN FOLDER`")
    if kind is not None and found != kind:
        raise ValueError(f"{where}: holds a {found} guide, not a {kind} guide")


def load_guide(folder: str | Path, kind: str | None = None) -> Guide:
    """Read a guide folder written by `Guide.save`; with `kind`, refuse a guide of another kind.
    Raises ValueError with a one-line reason."""
    folder = Path(folder)
    found = folder_guide_kind(folder)
    check_guide_kind(folder, found, kind)
    meta = json.loads((folder / "system.json").read_text())
    if meta.get("format") != GUIDE_FORMAT:
        raise ValueError(f"{folder}: guide folder format {meta.get('format')!r}; this t2i reads {GUIDE_FORMAT}")
    cls = GUIDES[found]
    guide = cls.build(GuideConfig.from_dict(meta["config"]), cls._read_tokenizer(folder), meta.get("name", "guide"))
    load_module(guide.net, folder / "model.safetensors")
    return guide.eval().requires_grad_(False)


def resolve_guide(guidance_type: str, guide: Any, folder: Path | None, device: torch.device) -> Guide | LogProb | None:
    """The guide of a guidance type: None for "cfg"; else `guide` (a Guide, a guide folder, or a log-probability
    callable (x, sigma, cond) -> (B,)), by default the system folder's guide_<type>/. A loaded Guide is moved to
    `device`. Raises ValueError naming the expected folder when there is none."""
    if guidance_type == "cfg":
        return None
    if guide is None:
        if folder is None:
            raise ValueError(f"guidance_type {guidance_type!r} needs guide= (a guide, its folder or a callable "
                             f"(x, sigma, cond) -> (B,)) or --guide PATH: this system was not loaded from a "
                             f"folder with guide_{guidance_type}/")
        guide = guide_folder(folder, guidance_type)
        if not guide.is_dir():
            raise ValueError(f"no {guidance_type} guide: {guide} does not exist; write one there with "
                             f"`t2i convert RUN {guide}` or give one (guide=, --guide PATH)")
    if isinstance(guide, (str, Path)):
        guide = load_guide(guide, guidance_type)
    if isinstance(guide, Guide):
        if guide.kind != guidance_type:
            raise ValueError(f"a {guide.kind} guide cannot give {guidance_type} guidance")
        return guide.to(device)
    if not callable(guide):
        raise ValueError(f"guide must be a Guide, a guide folder or a callable (x, sigma, cond) -> (B,), "
                         f"not {type(guide).__name__}")
    return guide


def guide_log_prob(guide: Guide | LogProb | None, prompts: list[str], size: tuple[int, int]) -> LogProb | None:
    """log p(prompt | x_t) of a resolved guide for a batch of prompts sampled at size (H, W)."""
    if not isinstance(guide, Guide):
        return guide
    if size != (guide.image_size, guide.image_size):
        raise ValueError(f"the {guide.kind} guide sees {guide.image_size} px images but the base stage "
                         f"samples {size[1]}x{size[0]} px")
    return guide.log_prob(prompts)


def copy_guides(source: Path | None, folder: Path, dtype: torch.dtype | None = None) -> None:
    """The guide folders of system folder `source` (guide_clip/, guide_classifier/) written into `folder`."""
    for kind in GUIDANCE_TYPES[1:]:
        src = None if source is None else guide_folder(source, kind)
        if src is not None and src.is_dir() and src.resolve() != guide_folder(folder, kind).resolve():
            load_guide(src, kind).save(guide_folder(folder, kind), dtype)
