"""One config base: frozen dataclasses saved as JSON beside the weights. `Config` gives them `to_dict`
(nested configs as dicts, tuples as lists) and `from_dict` (unknown fields refused, nested config
fields and tuples rebuilt from their annotations). A leaf: it imports nothing from t2i, so every floor
may use it."""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, Mapping, TypeVar

C = TypeVar("C", bound="Config")


def check_fields(cls: type, d: Mapping[str, Any]) -> None:
    """A ValueError naming the keys of `d` that are no field of the dataclass `cls`."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}")


def plain(value: Any) -> Any:
    """A config value as JSON holds it: configs as dicts, tuples as lists (a dict field's values as they are)."""
    if hasattr(value, "to_dict"):  # a Config, or a config class of its own making
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return dict(value)
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind) and hasattr(kind, "from_dict")


def _read(kind: Any, value: Any) -> Any:
    """A JSON value as the field annotation `kind` wants it: a nested config, a tuple, or as is."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        configs = [a for a in args if _is_config(a)]
        return configs[0].from_dict(value) if configs and isinstance(value, Mapping) else value
    if _is_config(kind) and isinstance(value, Mapping):
        return kind.from_dict(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_read(args[0], v) for v in value)
        return tuple(value)
    return value


def _fits(kind: Any, value: Any) -> bool:
    """Whether a JSON value can be the field annotation `kind` (scalars, tuples and unions of them; other
    annotations are not checked here)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or isinstance(kind, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is dict or origin is dict:
        return isinstance(value, Mapping)
    if _is_config(kind):
        return isinstance(value, (Mapping, kind))
    if kind is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return not args or (len(args) == len(value) and all(_fits(a, v) for a, v in zip(args, value)))
    return True


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


class Config:
    """Mixin for frozen dataclass configs: `to_dict` / `from_dict` done once."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        check_types(cls, d)
        hints = _hints(cls)
        return cls(**{k: _read(hints[k], v) for k, v in d.items()})


def check_types(cls: type, d: Any, where: str = "") -> None:
    """A one-line ValueError naming the first field of `d` (and of the configs nested in it) that is unknown
    to the dataclass `cls` or whose JSON value cannot be its annotation, e.g. 'UNetConfig.num_res_blocks'."""
    where = where or cls.__name__
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a table of fields, got {type(d).__name__}")
    check_fields(cls, d)
    hints = _hints(cls)
    for k, v in d.items():
        if not _fits(hints[k], v):
            raise ValueError(f"{where}.{k} must be {_name(hints[k])}, got {str(v)[:40]!r} ({type(v).__name__})")
        nested = [a for a in (hints[k], *typing.get_args(hints[k])) if _is_config(a)]
        if nested and isinstance(v, Mapping):
            check_types(nested[0], v, f"{where}.{k}")
