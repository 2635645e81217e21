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


class Config:
    """Mixin for frozen dataclass configs: `to_dict` / `from_dict` done once."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        check_fields(cls, d)
        hints = _hints(cls)
        return cls(**{k: _read(hints[k], v) for k, v in d.items()})
