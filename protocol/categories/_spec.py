"""What a category module declares: its kind, how the host dispatches it, and its typed methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Dispatch(StrEnum):
    """How the host picks among a tenant's slots of one category (sorted by priority)."""

    FAN_OUT = "fan_out"  # call every slot; failures are reported, not fatal to the others
    FIRST_SUCCESS = "first_success"  # try slots in order; the first that answers without error wins
    FIRST_NON_EMPTY = "first_non_empty"  # try in order; the first non-null result wins
    ALL_MUST_PASS = "all_must_pass"  # call in order; stop at the first that rejects
    PIPELINE = "pipeline"  # call in order; each slot receives the previous slot's result


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One method: the struct its params convert to and the struct (or None) it returns."""

    params: type[Any]
    result: type[Any] | None


@dataclass(frozen=True, slots=True)
class CategorySpec:
    """A category: wire method names are `"{kind}.{method}"`."""

    kind: str
    description: str
    dispatch: Dispatch
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    verdict: str | None = None  # the result field that says pass/allow (all_must_pass, ...)

    def wire_name(self, method: str) -> str:
        """Return the method name as it travels on the wire."""
        return f"{self.kind}.{method}"
