"""API key records, their scopes, and the repository seam where records are kept.

A record says what a key may do (`scopes`, `tenant_id`) and holds only a hash of its secret.
Persisting records is the config store's job through `KeyRepository`; `InMemoryKeyRepository`
serves tests. Generating and verifying keys is `runner.auth`'s.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from pydantic import BaseModel, ConfigDict

from .errors import RunnerError


class Scope(StrEnum):
    """What a key may do; a route needs every scope it declares (none implies another)."""

    PLUGINS_READ = "admin:plugins:read"
    PLUGINS_WRITE = "admin:plugins:write"
    KEYS_MANAGE = "keys:manage"


ALL_SCOPES: Final = frozenset(Scope)


class KeyRecord(BaseModel):
    """One stored API key: never the key itself, only `hash` (see `runner.auth.hash_key`).

    `tenant_id` is None for an operator-wide key, else the one tenant the key may act on.
    Times are timezone-aware UTC; a record with `revoked_at` set is refused at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    hash: str
    scopes: frozenset[Scope]
    tenant_id: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def is_revoked(self) -> bool:
        """Whether the key has been revoked."""
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """Return the record as JSON-ready data for API answers: everything but the hash."""
        data = self.model_dump(mode="json", exclude={"hash"})
        data["scopes"] = sorted(data["scopes"])
        return data


class DuplicateKeyError(RunnerError):
    """A record with this key id already exists; `key_id` names it."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"an API key with id {key_id!r} already exists")
        self.key_id = key_id


class KeyRepository(Protocol):
    """Where key records live. Implementations must make `revoke` visible to the next `get`."""

    async def get(self, key_id: str) -> KeyRecord | None:
        """Return the record with this id, revoked or not, or None."""
        ...

    async def list_all(self) -> list[KeyRecord]:
        """Return every record, revoked ones included, oldest first."""
        ...

    async def add(self, record: KeyRecord) -> None:
        """Store a new record; raise `DuplicateKeyError` if its id is taken."""
        ...

    async def revoke(self, key_id: str, revoked_at: datetime) -> KeyRecord | None:
        """Mark the record revoked (keeping an earlier `revoked_at`); return it, or None."""
        ...


class InMemoryKeyRepository:
    """A `KeyRepository` in a dict, for tests and for running without a store."""

    def __init__(self, records: list[KeyRecord] | None = None) -> None:
        self._records: dict[str, KeyRecord] = {r.id: r for r in records or []}
        self._lock = asyncio.Lock()

    async def get(self, key_id: str) -> KeyRecord | None:
        """Return the record with this id, revoked or not, or None."""
        return self._records.get(key_id)

    async def list_all(self) -> list[KeyRecord]:
        """Return every record, revoked ones included, oldest first."""
        return sorted(self._records.values(), key=lambda r: r.created_at)

    async def add(self, record: KeyRecord) -> None:
        """Store a new record; raise `DuplicateKeyError` if its id is taken."""
        async with self._lock:
            if record.id in self._records:
                raise DuplicateKeyError(record.id)
            self._records[record.id] = record

    async def revoke(self, key_id: str, revoked_at: datetime) -> KeyRecord | None:
        """Mark the record revoked (keeping an earlier `revoked_at`); return it, or None."""
        async with self._lock:
            record = self._records.get(key_id)
            if record is None or record.revoked_at is not None:
                return record
            revoked = record.model_copy(update={"revoked_at": revoked_at})
            self._records[key_id] = revoked
            return revoked
