"""The `System` protocol (what the CLI, `t2i.load`, the evaluators and the service rely on) and the
registry of systems by name."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

from PIL import Image

from t2i.systems.request import GenerationRequest


class System(Protocol):
    name: str
    capabilities: frozenset[str]

    def supports(self, capability: str) -> bool: ...

    def check(self, request: GenerationRequest) -> GenerationRequest: ...

    def generate(self, prompt: "str | list[str] | GenerationRequest", **options: Any) -> list[Image.Image]: ...

    def images(self, request: GenerationRequest) -> Iterator[Image.Image]: ...


REGISTRY: dict[str, type] = {}  # system.json's "system" -> the class that loads that folder


def register(name: str) -> Callable[[type], type]:
    """Class decorator: `@register("ldm")` names a system; `t2i.load`, the CLI and the contract test find it."""

    def add(cls: type) -> type:
        cls.kind = name
        REGISTRY[name] = cls
        return cls

    return add
