"""`Plugin`: what a plugin module declares, namely which class implements which category.

The worker runtime reads it after `initialize`; nothing here runs at import beyond registration.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from protocol import categories

C = TypeVar("C", bound=type[Any])


class PluginDefinitionError(Exception):
    """The plugin module declares something the SDK cannot serve (caught at start, not later)."""


@dataclass(frozen=True, slots=True)
class Implementation:
    """One category and the class that implements it."""

    kind: str
    cls: type[Any]


class Plugin:
    """The registry a plugin module exposes as its module-level `plugin` attribute.

    Decorate one class per category with `@plugin.category("kind")`. The class is built once per
    worker as `cls(ctx)` and must define every method of the category as `async def`. It may also
    define `async def start(self)` and `async def close(self)`, called after `initialize` and
    before the worker exits.
    """

    def __init__(self) -> None:
        self._implementations: dict[str, Implementation] = {}

    def category(self, kind: str) -> Callable[[C], C]:
        """Register the decorated class as this plugin's implementation of `kind`."""

        def register(cls: C) -> C:
            check_implementation(kind, cls)
            if kind in self._implementations:
                raise PluginDefinitionError(f"category {kind!r} is implemented twice")
            self._implementations[kind] = Implementation(kind, cls)
            return cls

        return register

    @property
    def implementations(self) -> list[Implementation]:
        """The registered implementations, in registration order."""
        return list(self._implementations.values())


def check_implementation(kind: str, cls: type[Any]) -> None:
    """Raise PluginDefinitionError unless `cls` implements every method of `kind` as async."""
    try:
        spec = categories.get(kind)
    except KeyError:
        known = ", ".join(sorted(categories.known_kinds()))
        raise PluginDefinitionError(f"unknown category {kind!r}; known: {known}") from None
    for name in spec.methods:
        method = getattr(cls, name, None)
        if method is None:
            raise PluginDefinitionError(f"{cls.__name__} lacks {kind}.{name}")
        if not inspect.iscoroutinefunction(method):
            raise PluginDefinitionError(f"{cls.__name__}.{name} must be `async def`")
