"""input_validator: accept or reject a value (all active validators must pass)."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class ValidationInput(msgspec.Struct, frozen=True, kw_only=True):
    """A value to check, named by `field`, with optional context."""

    field: str
    value: Any
    context: dict[str, Any] = msgspec.field(default_factory=dict)


class ValidationResult(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the value passes, and why not."""

    valid: bool
    errors: list[str] = msgspec.field(default_factory=list)


SPEC: Final = CategorySpec(
    kind="input_validator",
    description="Domain rules, password strength, denylists.",
    dispatch=Dispatch.ALL_MUST_PASS,
    methods={"validate": MethodSpec(ValidationInput, ValidationResult)},
    verdict="valid",
)
