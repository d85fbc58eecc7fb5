"""Plugin categories: one module per category, each exporting `SPEC: CategorySpec`.

A module's name is its kind. Adding a category means adding one module here; the registry finds it
by name, and nothing else changes. Modules are imported only when their kind is asked for.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from ._spec import CategorySpec, Dispatch, MethodSpec

__all__ = ["CategorySpec", "Dispatch", "MethodSpec", "get", "known_kinds"]


@functools.cache
def known_kinds() -> frozenset[str]:
    """Return every category kind this protocol version defines (without importing them)."""
    return frozenset(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


@functools.cache
def get(kind: str) -> CategorySpec:
    """Return the spec of `kind`; raise KeyError for an unknown kind."""
    if kind not in known_kinds():
        raise KeyError(kind)
    spec: CategorySpec = importlib.import_module(f"{__name__}.{kind}").SPEC
    return spec
