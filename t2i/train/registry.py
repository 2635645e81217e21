"""Name -> builder tables: stage kinds, networks and datasets, looked up by a recipe's strings.

A recipe names things (`stage = "diffusion"`, `network = "unet"`, `dataset = "shapes"`); these
tables turn the name into code in one place, so no module switches on strings.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from t2i.train.config import RecipeError

V = TypeVar("V")


class Registry(Generic[V]):
    """A named table of builders with an error that lists the known names."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, V] = {}

    def register(self, name: str) -> Callable[[V], V]:
        """Decorator: `@STAGES.register("diffusion")`."""

        def add(item: V) -> V:
            self._items[name] = item
            return item

        return add

    def add(self, name: str, item: V) -> None:
        self._items[name] = item

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> V:
        if name not in self._items:
            near = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise RecipeError(f"unknown {self.what} '{name}'{hint}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


STAGES: Registry = Registry("stage")
NETWORKS: Registry = Registry("network")
DATASETS: Registry = Registry("dataset")
