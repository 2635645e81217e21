"""Safe weight files: safetensors in and out, and a key/shape-checked load into a module.

Nothing here ever unpickles: pickle-based checkpoints (.ckpt/.pt/.pth/.bin) are refused
with a message that names the file, because unpickling can run code from the file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # shipped system folders: weights/<name>/system.json


def shipped_weights(name: str) -> Path:
    """The folder of a named system's shipped weights (it may not exist yet)."""
    return WEIGHTS_DIR / name


def system_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The t2i system folder (system.json) a path or a shipped system's name points to, else None."""
    path = Path(name_or_path)
    for folder in (path, shipped_weights(str(name_or_path))):
        if (folder / "system.json").is_file():
            return folder
    return None


def _refuse(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path}: {why}. t2i loads weights only from .safetensors files and never unpickles "
        "(unpickling can execute code from the file). Convert it in a trusted environment, "
        "e.g. `safetensors.torch.save_file(torch.load(f, weights_only=True), 'x.safetensors')`."
    )


def check_safetensors_file(path: str | os.PathLike) -> Path:
    """Raise a ValueError naming `path` unless it is a readable safetensors file; return it as a Path."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse(path, f"refusing a '{path.suffix}' file (a pickle-based checkpoint format)")
    if not path.is_file():
        pickled = [p.name for p in (path.with_suffix(s) for s in PICKLE_SUFFIXES) if p.is_file()]
        if pickled:
            raise _refuse(path, f"missing; only the pickle file(s) {', '.join(pickled)} are present")
        raise FileNotFoundError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK":
        raise _refuse(path, "this is a zip archive (a torch.save pickle checkpoint), not safetensors")
    if head[:1] == b"\x80" and head[8:9] != b"{":  # a safetensors header length may start with 0x80 too
        raise _refuse(path, "this is a pickle stream, not safetensors")
    if len(head) < 9:
        raise _refuse(path, "file too short to be safetensors")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER or n + 8 > path.stat().st_size or head[8:9] != b"{":
        raise _refuse(path, "not a safetensors file (bad header)")
    return path


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read every tensor of a .safetensors file; refuse anything else (pickle above all)."""
    from safetensors.torch import load_file

    path = check_safetensors_file(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # a corrupt body: say which file
        raise ValueError(f"{path}: could not read as safetensors: {e}") from e


SHARD_BYTES = 16 * 2**20  # system folders split weights above this into shards (tracked files stay < 20 MiB)


def index_path(path: str | os.PathLike) -> Path:
    """Where a sharded file's index lives: NAME.safetensors.index.json (the diffusers / transformers convention)."""
    path = Path(path)
    return path.with_name(path.name + ".index.json")


def sharded_exists(path: str | os.PathLike) -> bool:
    """Whether `load_sharded` finds something at path: the file itself or its shards' index."""
    return Path(path).is_file() or index_path(path).is_file()


def save_sharded(state: Mapping[str, torch.Tensor], path: str | os.PathLike, max_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write tensors as `path`, or, above max_bytes, as shards STEM-00001-of-0000N.safetensors beside an index
    mapping each tensor to its shard (as diffusers' and transformers' sharded checkpoints do)."""
    path = Path(path)
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    if sum(sizes.values()) <= max_bytes:
        return [save_safetensors(state, path)]
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for k, v in state.items():
        if shards[-1] and used + sizes[k] > max_bytes:
            shards.append({})
            used = 0
        shards[-1][k] = v
        used += sizes[k]
    names = [f"{path.stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = [save_safetensors(shard, path.with_name(name)) for shard, name in zip(shards, names)]
    index = {"metadata": {"total_size": sum(sizes.values())},
             "weight_map": {k: name for shard, name in zip(shards, names) for k in shard}}
    index_path(path).write_text(json.dumps(index, indent=2) + "\n")
    return written + [index_path(path)]


def load_sharded(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read what `save_sharded` wrote: the file itself, or the shards its index names."""
    path = Path(path)
    index = index_path(path)
    if path.exists() or not index.is_file():
        return load_safetensors(path, device)
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_safetensors(path.with_name(name), device))
    return state


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header ({} when none)."""
    path = check_safetensors_file(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return dict(header.get("__metadata__", {}) or {})


def save_safetensors(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write tensors to a .safetensors file (contiguous CPU copies; shared storage is un-aliased)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: weights are saved as '.safetensors' files only")
    meta = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"{path}: safetensors metadata must map str to str, got {k!r}: {type(v).__name__}")
        meta[k] = v
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: '{k}' is a {type(v).__name__}, not a tensor")
        t = v.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ident is not None and (ident in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()  # tied or viewed tensors: safetensors refuses shared storage
        if ident is not None:
            seen.add(ident)
        out[k] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=meta or None)
    os.chmod(path, 0o644)  # safetensors' writer leaves 0600; weights are as readable as the files beside them
    return path


def check_state(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    where: str = "",
) -> tuple[list[str], list[str]]:
    """Compare `state` with expected key -> shape; raise a ValueError naming every misfit.

    Shape mismatches always raise. Missing and unexpected keys raise when `strict`, and are
    returned as (missing, unexpected) otherwise.
    """
    prefix = f"{where}: " if where else ""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    for k, shape in expected.items():
        if k in state:
            found = tuple(state[k].shape)
            if found != tuple(shape):
                problems.append(f"tensor '{k}' has shape {found} but the model expects {tuple(shape)}")
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_clip(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_clip(unexpected)}")
    if problems:
        raise ValueError(prefix + "checkpoint does not fit the model: " + "; ".join(problems))
    return missing, unexpected


def _clip(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


@torch.no_grad()
def load_into(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, where: str = ""
) -> tuple[list[str], list[str]]:
    """Copy `state_dict` into `module` after checking every key and shape; return (missing, unexpected)."""
    own = module.state_dict()
    missing, unexpected = check_state({k: v.shape for k, v in own.items()}, state_dict, strict=strict, where=where)
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected


def read_model_folder(folder: str | os.PathLike, weights_name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A diffusers / transformers model folder: its config.json as a dict and its safetensors weights."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a diffusers / transformers model folder)")
    return json.loads(config_path.read_text()), load_safetensors(folder / weights_name)


def load_model_folder(folder: str | os.PathLike, weights_name: str, build: Callable[[dict[str, Any]], Any],
                      convert: Callable[[dict[str, torch.Tensor], Any], dict[str, torch.Tensor]]):
    """A t2i module from a diffusers / transformers model folder: `build(config.json)` makes it and
    `convert(state, module.config)` maps the folder's weights onto it (every misfit named)."""
    config, state = read_model_folder(folder, weights_name)
    model = build(config)
    load_into(model, convert(state, model.config), where=str(folder))
    return model


def write_model_folder(
    folder: str | os.PathLike,
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    weights_name: str,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write config.json and the safetensors weights of a diffusers / transformers model folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2))
    save_safetensors(state, folder / weights_name, metadata=metadata)
    return folder
