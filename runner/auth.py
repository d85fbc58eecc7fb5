"""API keys: generation, hashing, verification, and what an authenticated key may do.

A key reads `crl_<key id>_<secret>`; the id finds the record without scanning, and only a hash
of it is stored (`KeyRecord.hash`). Persistence is behind `runner.keys.KeyRepository`;
which scopes and tenant a route needs is declared in `runner.access`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from .errors import RunnerError
from .keys import KeyRecord, KeyRepository, Scope

KEY_PREFIX: Final = "crl"
HASH_SCHEME: Final = "sha256"
MAX_NAME_CHARS: Final = 200
_ID_BYTES: Final = 8
_SECRET_BYTES: Final = 32
_KEY_RE: Final = re.compile(r"crl_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")
# Hashed for unknown ids, so a miss costs what a hit costs.
_DUMMY_HASH: Final = "sha256:" + "0" * 64

_log = logging.getLogger(__name__)


class AuthenticationError(RunnerError):
    """No usable key was presented (401). `reason` is safe to show; `detail` is for logs only.

    `reason` is `missing` (no key) or `invalid` (malformed, unknown, wrong secret or revoked:
    the answer never says which, so a caller learns nothing about which keys exist).
    """

    def __init__(
        self, reason: Literal["missing", "invalid"], detail: str, key_id: str | None = None
    ) -> None:
        message = "an API key is required" if reason == "missing" else "invalid API key"
        super().__init__(message)
        self.reason = reason
        self.detail = detail
        self.key_id = key_id


class PermissionDeniedError(RunnerError):
    """The key is valid but may not do this (403): `missing_scopes` or a foreign `tenant_id`."""

    def __init__(
        self,
        message: str,
        *,
        missing_scopes: frozenset[Scope] = frozenset(),
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.missing_scopes = missing_scopes
        self.tenant_id = tenant_id


class KeyNotFoundError(RunnerError):
    """No key with `key_id` exists that the caller may see (404)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r}")
        self.key_id = key_id


class KeyRequestError(RunnerError):
    """A key cannot be created as asked (422): an empty name or no scopes; see the message."""


@dataclass(frozen=True)
class Principal:
    """An authenticated key, as handlers and logs see it: no secret, no hash."""

    key_id: str
    name: str
    scopes: frozenset[Scope]
    tenant_id: str | None

    @property
    def is_operator(self) -> bool:
        """Whether the key is operator-wide (bound to no tenant)."""
        return self.tenant_id is None

    @classmethod
    def of(cls, record: KeyRecord) -> Principal:
        """Return the principal a record authenticates as."""
        return cls(record.id, record.name, record.scopes, record.tenant_id)


def generate_key() -> tuple[str, str]:
    """Return a fresh `(key id, key)`; the key carries 256 random bits of secret."""
    key_id = secrets.token_hex(_ID_BYTES)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def parse_key(key: str) -> tuple[str, str] | None:
    """Split a key into `(key id, secret)`, or return None if it is not a well-formed key."""
    match = _KEY_RE.fullmatch(key)
    return (match["id"], match["secret"]) if match else None


def hash_key(key: str) -> str:
    """Return the stored form of a key: `sha256:<hex>` of the whole key.

    A plain fast hash suffices: the secret is 256 random bits, so neither a slow hash nor a
    pepper would make guessing any harder, and a slow hash would cost CPU on every request.
    The hashed text holds the `crl_` prefix and the key id, so a stored hash cannot be
    replayed under another id. This is the config store's `hash_api_key` scheme too.
    """
    return f"{HASH_SCHEME}:{hashlib.sha256(key.encode()).hexdigest()}"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """Return the key sent as `X-API-Key` or `Authorization: Bearer`, or None.

    Raises `AuthenticationError` when both headers carry different values.
    """
    api_key = headers.get("X-API-Key", "").strip() or None
    bearer = None
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        bearer = value.strip() or None
    if api_key and bearer and not hmac.compare_digest(api_key.encode(), bearer.encode()):
        raise AuthenticationError("invalid", "X-API-Key and Authorization carry different keys")
    return api_key or bearer


def authorize(principal: Principal, required: Iterable[Scope], tenant_id: str | None) -> None:
    """Check `check_scopes` and then `check_tenant`; raise `PermissionDeniedError`."""
    check_scopes(principal, required)
    check_tenant(principal, tenant_id)


def check_scopes(principal: Principal, required: Iterable[Scope]) -> None:
    """Raise `PermissionDeniedError` unless `principal` holds every `required` scope."""
    missing = frozenset(required) - principal.scopes
    if missing:
        names = ", ".join(sorted(missing))
        raise PermissionDeniedError(f"this key lacks scope {names}", missing_scopes=missing)


def check_tenant(principal: Principal, tenant_id: str | None) -> None:
    """Raise `PermissionDeniedError` unless `principal` may act on `tenant_id`.

    `tenant_id` is the tenant a request acts on, None for operator-wide acts; an operator key
    may act on anything, a tenant key only on its own tenant.
    """
    if principal.tenant_id is not None and tenant_id != principal.tenant_id:
        target = "operator-wide resources" if tenant_id is None else f"tenant {tenant_id!r}"
        raise PermissionDeniedError(f"this key may not act on {target}", tenant_id=tenant_id)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ApiKeys:
    """Create, authenticate, list and revoke keys over a `KeyRepository`.

    Nothing is cached: every `authenticate` reads the repository, so a revocation applies to
    the very next request. `by` is the acting key (None for the host itself): a tenant key sees
    and manages only its tenant's keys and cannot grant scopes it does not hold.
    """

    def __init__(
        self, repository: KeyRepository, *, now: Callable[[], datetime] = _utc_now
    ) -> None:
        self.repository = repository
        self._now = now

    async def create(
        self,
        name: str,
        scopes: Iterable[Scope],
        tenant_id: str | None = None,
        *,
        by: Principal | None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key and return its record and the key, which is shown this once only.

        Raises `KeyRequestError` for an empty name or scope set and `PermissionDeniedError`
        when `by` would grant more than it holds or reach outside its tenant.
        """
        name, granted = name.strip(), frozenset(scopes)
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise KeyRequestError(f"a key name is 1 to {MAX_NAME_CHARS} printable characters")
        if not granted:
            raise KeyRequestError("a key needs at least one scope")
        if by is not None:
            authorize(by, granted, tenant_id)
        key_id, key = generate_key()
        record = KeyRecord(
            id=key_id,
            name=name,
            hash=hash_key(key),
            scopes=granted,
            tenant_id=tenant_id,
            created_at=self._now(),
        )
        await self.repository.add(record)
        _log.info(
            "API key %s created for %s with scopes %s by %s",
            key_id,
            "operator" if tenant_id is None else f"tenant {tenant_id}",
            ",".join(sorted(granted)),
            by.key_id if by else "host",
        )
        return record, key

    async def authenticate(self, key: str | None) -> Principal:
        """Return the principal of a presented key; raise `AuthenticationError` otherwise."""
        if not key:
            raise AuthenticationError("missing", "no key presented")
        parsed = parse_key(key)
        if parsed is None:
            raise AuthenticationError("invalid", "malformed key")
        key_id = parsed[0]
        record = await self.repository.get(key_id)
        stored = record.hash if record is not None else _DUMMY_HASH
        matches = hmac.compare_digest(hash_key(key).encode(), stored.encode())
        if record is None:
            raise AuthenticationError("invalid", "unknown key id", key_id)
        if not matches:
            raise AuthenticationError("invalid", "wrong secret", key_id)
        if record.is_revoked:
            raise AuthenticationError("invalid", "revoked key", key_id)
        return Principal.of(record)

    async def list_keys(self, *, by: Principal | None) -> list[KeyRecord]:
        """Return the records `by` may see: all for operator keys, else its tenant's."""
        records = await self.repository.list_all()
        if by is None or by.is_operator:
            return records
        return [r for r in records if r.tenant_id == by.tenant_id]

    async def revoke(self, key_id: str, *, by: Principal | None) -> KeyRecord:
        """Revoke a key at once and return its record; raise `KeyNotFoundError` if unseen."""
        record = await self.repository.get(key_id)
        if record is None or (by is not None and not _may_see(by, record)):
            raise KeyNotFoundError(key_id)
        revoked = await self.repository.revoke(key_id, self._now())
        if revoked is None:
            raise KeyNotFoundError(key_id)
        _log.info("API key %s revoked by %s", key_id, by.key_id if by else "host")
        return revoked


def _may_see(principal: Principal, record: KeyRecord) -> bool:
    return principal.is_operator or record.tenant_id == principal.tenant_id
