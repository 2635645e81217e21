"""Checkpoints that are never half-read: a folder written aside, checked by a manifest, renamed into place.

Layout of `RUN/checkpoints/step_00001000/`:
  config.json          the recipe (and anything the stage adds), to rebuild the model
  model.safetensors    raw trainable weights
  ema.safetensors      EMA weights, same keys but frozen parameters' (stored once, in model.safetensors)
  optimizer.safetensors  AdamW state tensors, keyed "<param index>.<name>"
  state.json           step, data position, LR, optimizer param groups, RNG states of every rank
  <extras>             stage files such as tokenizer.json
  manifest.json        written last: sha256 and size of every file above

Saving writes into `.tmp-step_...`, fsyncs every file, writes the manifest, fsyncs, then renames
the folder (atomic on POSIX) and fsyncs the parent. A folder without a manifest, or whose files
do not match it, is skipped with a message and never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from t2i.io.weights import load_safetensors, save_safetensors

FORMAT = "t2i-checkpoint/1"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint folder that is incomplete or corrupted."""


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def optimizer_to_files(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON (groups, scalars)."""
    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            key = f"{idx}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_to_files`: a state_dict that `optimizer.load_state_dict` takes."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass(frozen=True)
class CheckpointParts:
    """What one checkpoint holds: the config (the recipe), raw and EMA weights, the optimizer's state_dict,
    the training state (step, data position, RNG states) and a stage's extra files (name -> bytes)."""

    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]
    extras: dict[str, bytes] | None = None


def save_checkpoint(root: str | os.PathLike, step: int, *, keep: int = 3, on_file: Callable[[str], None] | None = None,
                    **parts: Any) -> Path:
    """`write_checkpoint` with the parts as keywords (config=, model=, ema=, optimizer=, state=, extras=),
    the form the trainer calls; the keywords go straight into CheckpointParts, which checks them."""
    return write_checkpoint(root, step, CheckpointParts(**parts), keep=keep, on_file=on_file)


def write_checkpoint(root: str | os.PathLike, step: int, parts: CheckpointParts, *, keep: int = 3,
                     on_file: Callable[[str], None] | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically, then delete all but the last `keep`.

    `on_file(name)` runs before each file is written (tests use it to be killed mid-save).
    """
    config, model, ema, optimizer, state, extras = (parts.config, parts.model, parts.ema, parts.optimizer,
                                                    parts.state, parts.extras)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    opt_tensors, opt_meta = optimizer_to_files(optimizer)
    writers: dict[str, Callable[[Path], Any]] = {
        "config.json": lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True)),
        "model.safetensors": lambda p: save_safetensors(model, p),
        "ema.safetensors": lambda p: save_safetensors(ema, p),
        "optimizer.safetensors": lambda p: save_safetensors(opt_tensors, p),
        "state.json": lambda p: p.write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1)),
    }
    for name, data in (extras or {}).items():
        writers[name] = lambda p, data=data: p.write_bytes(data)
    files = {}
    for name, write in writers.items():
        if on_file is not None:
            on_file(name)
        path = tmp / name
        write(path)
        _fsync_file(path)
        files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    if on_file is not None:
        on_file(MANIFEST)
    manifest = {"format": FORMAT, "step": step, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. a resume that made no progress)
        old = root / f".old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old)
    tmp.rename(final)
    _fsync_dir(root)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete older complete ones and broken ones older than those.

    Only complete checkpoints count toward `keep` (a quick check: manifest present, sizes match),
    so a run of broken saves can never push the last good checkpoint out.
    """
    complete = [p for p in list_checkpoints(root) if _looks_complete(p)]
    kept = complete[-keep:]
    if not kept:
        return
    oldest_kept = _step_of(kept[0])
    for path in list_checkpoints(root):
        if path not in kept and _step_of(path) < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))  # type: ignore[union-attr]


def _looks_complete(path: Path) -> bool:
    """Manifest present and every file of the size it lists (no hashing: cheap enough for every save)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return all((path / n).stat().st_size == info["bytes"] for n, info in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Promoted checkpoint folders, oldest first (not verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=_step_of)


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest of a complete, uncorrupted checkpoint; raise CheckpointError otherwise."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (the save did not finish)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: {MANIFEST} is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {manifest.get('format')!r}")
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{path}: {name} has {f.stat().st_size} bytes, the manifest says {info['bytes']}")
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its sha256 in the manifest (corrupted)")
    return manifest


def latest_checkpoint(root: str | os.PathLike, log: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint under `root` that verifies; broken ones are skipped with a message."""
    root = Path(root)
    if root.is_dir():
        for stale in root.glob(".tmp-step_*"):
            log(f"skipping {stale}: an unfinished save (no manifest); it is never loaded")
    for path in reversed(list_checkpoints(root)):
        try:
            verify(path)
            return path
        except CheckpointError as e:
            log(f"skipping checkpoint: {e}")
    return None


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, read back."""

    path: Path
    step: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]

    def extra(self, name: str) -> bytes:
        return (self.path / name).read_bytes()


def read_checkpoint(path: str | os.PathLike, device: str = "cpu") -> Checkpoint:
    """Verify, then read a checkpoint folder (safetensors only, never pickle)."""
    path = Path(path)
    manifest = verify(path)
    state = json.loads((path / "state.json").read_text())
    opt_meta = state.pop("optimizer")
    model = load_safetensors(path / "model.safetensors", device)
    ema = load_safetensors(path / "ema.safetensors", device)
    ema = {**{k: v for k, v in model.items() if k not in ema}, **ema}  # frozen weights are stored once, in the model
    return Checkpoint(
        path=path,
        step=int(manifest["step"]),
        config=json.loads((path / "config.json").read_text()),
        model=model,
        ema=ema,
        optimizer=optimizer_from_files(load_safetensors(path / "optimizer.safetensors", device), opt_meta),
        state=state,
    )
