"""jwt_customizer: add or transform claims on issued tokens (applied in priority order)."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class JwtClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims of a token about to be issued, and the same shape back, changed."""

    subject: str
    claims: dict[str, Any] = msgspec.field(default_factory=dict)


SPEC: Final = CategorySpec(
    kind="jwt_customizer",
    description="Add or transform claims on issued tokens.",
    dispatch=Dispatch.PIPELINE,
    methods={"customize": MethodSpec(JwtClaims, JwtClaims)},
)
