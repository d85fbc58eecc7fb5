"""API key records kept in the config document: the `KeyRepository` the host serves from.

The document stores `ApiKeyRecord`s (scopes as strings, so an older corral can read a newer
scope); the API works with `KeyRecord`s (scopes as `Scope`). This module maps between them and
reads the document on every lookup, so a revocation by any writer applies at once.
"""

from __future__ import annotations

import logging
from datetime import datetime

from .config_model import ApiKeyRecord, ConfigDocument
from .config_store import ConfigStore
from .keys import DuplicateKeyError, KeyRecord, Scope

_log = logging.getLogger(__name__)
_SCOPES = frozenset(s.value for s in Scope)


class StoreKeyRepository:
    """Key records in the config store's `api_keys` list."""

    def __init__(self, store: ConfigStore) -> None:
        self._store = store

    async def get(self, key_id: str) -> KeyRecord | None:
        """Return the record with this id, revoked or not, or None."""
        snapshot = await self._store.peek()
        stored = next((k for k in snapshot.document.api_keys if k.id == key_id), None)
        return _to_record(stored) if stored is not None else None

    async def list_all(self) -> list[KeyRecord]:
        """Return every record, revoked ones included, oldest first."""
        snapshot = await self._store.peek()
        records = [_to_record(k) for k in snapshot.document.api_keys]
        return sorted(records, key=lambda r: r.created_at)

    async def add(self, record: KeyRecord) -> None:
        """Store a new record; raise `DuplicateKeyError` if its id is taken."""

        def add(doc: ConfigDocument) -> ConfigDocument:
            if any(k.id == record.id for k in doc.api_keys):
                raise DuplicateKeyError(record.id)
            doc.api_keys.append(_to_stored(record))
            return doc

        await self._store.update(add)

    async def revoke(self, key_id: str, revoked_at: datetime) -> KeyRecord | None:
        """Mark the record revoked (keeping an earlier `revoked_at`); return it, or None."""

        def revoke(doc: ConfigDocument) -> ConfigDocument:
            for i, stored in enumerate(doc.api_keys):
                if stored.id == key_id and stored.revoked_at is None:
                    doc.api_keys[i] = stored.model_copy(update={"revoked_at": revoked_at})
            return doc

        await self._store.update(revoke)
        return await self.get(key_id)


def _to_record(stored: ApiKeyRecord) -> KeyRecord:
    unknown = sorted(set(stored.scopes) - _SCOPES)
    if unknown:
        _log.warning("API key %s has scopes this corral does not know: %s", stored.id, unknown)
    return KeyRecord(
        id=stored.id,
        name=stored.name,
        hash=stored.hash,
        scopes=frozenset(Scope(s) for s in stored.scopes if s in _SCOPES),
        tenant_id=stored.tenant_id,
        created_at=stored.created_at,
        revoked_at=stored.revoked_at,
    )


def _to_stored(record: KeyRecord) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=record.id,
        name=record.name,
        hash=record.hash,
        scopes=sorted(record.scopes),
        tenant_id=record.tenant_id,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
    )
