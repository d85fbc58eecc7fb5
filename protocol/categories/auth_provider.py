"""auth_provider: check credentials (passwords, MFA, hardware tokens)."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """What a user presented; `factors` holds extra factors by name (otp, webauthn, ...)."""

    username: str
    secret: str
    factors: dict[str, str] = msgspec.field(default_factory=dict)


class AuthResult(msgspec.Struct, frozen=True, kw_only=True):
    """The verdict; `subject` names the authenticated principal."""

    authenticated: bool
    subject: str | None = None
    reason: str | None = None


SPEC: Final = CategorySpec(
    kind="auth_provider",
    description="Custom credential checks, MFA, hardware tokens.",
    dispatch=Dispatch.FIRST_NON_EMPTY,
    methods={"authenticate": MethodSpec(Credentials, AuthResult)},
    verdict="authenticated",
)
