"""Frozen dataclass configs read from TOML tables, checked key by key.

`TableConfig` gives every recipe section `to_dict` / `from_dict`; `from_dict` refuses unknown
keys (suggesting the nearest known one), checks each value's type against the field's
annotation, and runs the class's own `check()` so a bad value is reported with its section,
key and value: "recipe tiny.toml: [train] lr = -1.0: must be > 0".
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, asdict, fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T", bound="TableConfig")


class RecipeError(ValueError):
    """A recipe value that cannot work; the message names the section, key and value."""


def bad(key: str, value: Any, requirement: str) -> RecipeError:
    """The one way to report a bad value: `key = value: requirement`."""
    return RecipeError(f"{key} = {value!r}: {requirement}")


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against a field annotation (int, float, str, bool, dict, tuple[X, ...])."""
    origin = typing.get_origin(kind)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(key, value, "must be a number")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(key, value, "must be an integer")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise bad(key, value, "must be true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise bad(key, value, "must be a string")
        return value
    if kind is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise bad(key, value, "must be a table")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(key, value, "must be a list")
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise bad(key, value, f"must be a list of {len(args)} values")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{key}: union-typed config fields are not supported")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class TableConfig:
    """Mixin for frozen dataclasses read from one TOML table."""

    def check(self) -> None:
        """Raise `bad(key, value, requirement)` for a value that cannot work (override)."""

    def __post_init__(self) -> None:
        self.check()

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], table: Mapping[str, Any] | None, where: str = "") -> T:
        """Build from a table; any problem is a RecipeError prefixed with `where` (e.g. "[train]")."""
        table = dict(table or {})
        prefix = f"{where} " if where else ""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        for key in table:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else f"; known keys: {', '.join(names)}"
                raise RecipeError(f"{prefix}unknown key '{key}'{hint}")
        values = {}
        try:
            for f in fields(cls):  # type: ignore[arg-type]
                if f.name in table:
                    values[f.name] = _coerce(table[f.name], hints[f.name], f.name)
                elif f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
                    raise RecipeError(f"missing required key '{f.name}'")
            return cls(**values)
        except RecipeError as e:
            raise RecipeError(prefix + str(e)) from None
