"""Explicit, two-way key maps between t2i state dicts and other layouts (nanoGPT `from_pretrained` style).

A map is a list of `Rename` rows, one per t2i tensor, built from a model config by the
converter of each layout. The same rows drive both directions, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rename:
    """One t2i tensor and the tensor(s) that hold it elsewhere.

    Several `theirs` names are concatenated along dim 0 into `ours` (fused q/k/v). With
    `conv1x1`, their weight is a 1x1 conv (O, I, 1, 1) and ours a Linear weight (O, I).
    """

    ours: str
    theirs: tuple[str, ...]
    conv1x1: bool = False


def renames(
    ours: str, theirs: str | tuple[str, ...], params: Iterable[str] = ("weight", "bias"), conv1x1: bool = False
) -> list[Rename]:
    """Rows for every parameter of one module: `ours.p` <- `theirs.p` (or several fused) for p in params."""
    theirs = (theirs,) if isinstance(theirs, str) else tuple(theirs)
    return [Rename(f"{ours}.{p}", tuple(f"{t}.{p}" for t in theirs), conv1x1 and p == "weight") for p in params]


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def from_layout(
    table: list[Rename],
    state: Mapping[str, torch.Tensor],
    *,
    expected: Mapping[str, torch.Size] | None = None,
    ignore: Iterable[str] = (),
    where: str = "",
) -> dict[str, torch.Tensor]:
    """Their state -> t2i state by `table`; raise naming any missing, unexpected or misshapen tensor.

    `expected` (t2i key -> shape, e.g. from a model built on the meta device) lets the error
    name their tensor and the shape the t2i model needs. Keys ending in any `ignore` suffix
    (non-persistent buffers such as position_ids) are dropped silently.
    """
    prefix = f"{where}: " if where else ""
    ignore = tuple(ignore)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    problems: list[str] = []
    for row in table:
        absent = [k for k in row.theirs if k not in state]
        if absent:
            missing += absent
            continue
        parts = [state[k] for k in row.theirs]
        used.update(row.theirs)
        if row.conv1x1:
            bad = [k for k, t in zip(row.theirs, parts) if t.ndim not in (2, 4) or (t.ndim == 4 and t.shape[2:] != (1, 1))]
            if bad:
                problems.append(f"tensor '{bad[0]}' has shape {tuple(state[bad[0]].shape)}, expected a 1x1 conv or linear weight")
                continue
            parts = [t.reshape(t.shape[0], -1) for t in parts]  # (O, I, 1, 1) -> (O, I)
        try:
            t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        except RuntimeError:
            shapes = ", ".join(f"'{k}' {tuple(state[k].shape)}" for k in row.theirs)
            problems.append(f"tensors {shapes} cannot be fused into '{row.ours}'")
            continue
        if expected is not None and row.ours in expected and tuple(t.shape) != tuple(expected[row.ours]):
            src = " + ".join(f"'{k}' {tuple(state[k].shape)}" for k in row.theirs)
            problems.append(
                f"tensor {src} gives '{row.ours}' shape {tuple(t.shape)} but the model expects {tuple(expected[row.ours])}"
            )
            continue
        out[row.ours] = t
    unexpected = [k for k in state if k not in used and not k.endswith(ignore)]
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {_short(unexpected)}")
    if problems:
        raise ValueError(prefix + "checkpoint does not fit: " + "; ".join(problems))
    return out


def to_layout(table: list[Rename], state: Mapping[str, torch.Tensor], *, where: str = "") -> dict[str, torch.Tensor]:
    """t2i state -> their state by `table` (splits fused tensors, restores 1x1 conv shapes)."""
    prefix = f"{where}: " if where else ""
    known = {row.ours for row in table}
    missing = [row.ours for row in table if row.ours not in state]
    unexpected = [k for k in state if k not in known]
    if missing or unexpected:
        raise ValueError(
            prefix + f"state does not match the config: missing {_short(missing) or 'none'}; "
            f"unexpected {_short(unexpected) or 'none'}"
        )
    out: dict[str, torch.Tensor] = {}
    for row in table:
        t = state[row.ours]
        parts = t.chunk(len(row.theirs), dim=0) if len(row.theirs) > 1 else (t,)
        for name, p in zip(row.theirs, parts):
            out[name] = p[..., None, None].contiguous() if row.conv1x1 else p.contiguous()
    return out
