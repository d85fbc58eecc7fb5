"""identity_provider: look users up in a directory (LDAP, SAML, OIDC, AD)."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class IdentityQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Find one user by subject or by username."""

    subject: str | None = None
    username: str | None = None


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """A directory entry."""

    subject: str
    username: str | None = None
    email: str | None = None
    groups: list[str] = msgspec.field(default_factory=list)
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


SPEC: Final = CategorySpec(
    kind="identity_provider",
    description="LDAP, SAML, OIDC, AD, social federation.",
    dispatch=Dispatch.FIRST_NON_EMPTY,
    methods={"lookup": MethodSpec(IdentityQuery, Identity)},
)
