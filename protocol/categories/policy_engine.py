"""policy_engine: decide whether a subject may perform an action (all engines must allow)."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class PolicyInput(msgspec.Struct, frozen=True, kw_only=True):
    """The question: may `subject` do `action` to `resource`?"""

    subject: str
    action: str
    resource: str
    context: dict[str, Any] = msgspec.field(default_factory=dict)


class PolicyDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The answer, with a reason for a denial."""

    allow: bool
    reason: str | None = None


SPEC: Final = CategorySpec(
    kind="policy_engine",
    description="Rego, OPA, custom ABAC.",
    dispatch=Dispatch.ALL_MUST_PASS,
    methods={"evaluate": MethodSpec(PolicyInput, PolicyDecision)},
    verdict="allow",
)
