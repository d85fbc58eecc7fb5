"""`PgConfigStore`: the `ConfigStore` in PostgreSQL, one document shared by every host.

Each version of the validated document is one row of `config_versions`, holding the exact bytes
the JSON store would write, so ETags are the same digests on every host. `update` locks the head
row (`SELECT ... FOR UPDATE`), applies the mutator to the current version, inserts the next one,
moves the head, prunes history beyond the backups kept and `NOTIFY corral_config, '<version>'`,
all in one transaction: concurrent writers from any host are serialized, none is lost, and a
commit is announced exactly when it is visible. Secrets are encrypted by corral with the local
key file (`config_secrets`), which every host must share. docs/store-postgresql.md explains why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from pydantic import JsonValue

from ..audit import AuditLog
from ..config_errors import (
    ConfigError,
    ConfigInvalidError,
    ConfigUnrecoverableError,
    ConfigWriteError,
    PreconditionFailedError,
    SecretKeyError,
)
from ..config_model import ConfigDocument, Features, default_document
from ..config_rotation import KeyRotation
from ..config_secrets import (
    SecretBox,
    SecretFieldResolver,
    SecretKey,
    check_document,
    decrypt_settings,
    encrypt_document,
    no_secret_fields,
    reencrypt_document,
)
from ..config_settings import ConfigSettings
from ..config_snapshot import ConfigSnapshot, decode_document, encode_document
from ..config_store import Mutator, _revalidate
from .connect import CONNECTION_ERRORS, Connection, Pool, redact

CHANNEL: Final = "corral_config"
# pg_advisory_xact_lock key of creating the first version: "corral" in ASCII, then 2.
_INIT_LOCK: Final = 0x636F7272616C0002
_REASON_CHARS: Final = 200
_T = TypeVar("_T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One stored version of the document (the newest `backups + 1` are kept)."""

    version: int
    etag: str
    reason: str
    created_at: datetime


class PgConfigStore:
    """The document in PostgreSQL. Build with `await PgConfigStore.open(pool, settings, ...)`.

    `path` names the database (password removed) where the JSON store names its file. Reads
    serve a cached snapshot while the head version is unchanged (one small query each); if the
    database cannot be reached, reads serve the last version seen, and writes raise
    ConfigWriteError (HTTP 503) until it is back.
    """

    def __init__(
        self,
        pool: Pool,
        url: str,
        settings: ConfigSettings,
        box: SecretBox,
        secret_fields: SecretFieldResolver,
        audit: AuditLog | None,
    ) -> None:
        self.settings = settings
        self.path = redact(url)
        self._pool = pool
        self._box = box
        self._secret_fields = secret_fields
        self._audit = audit
        self._cache: tuple[int, ConfigSnapshot] | None = None
        self._degraded = False

    @classmethod
    async def open(
        cls,
        pool: Pool,
        url: str,
        settings: ConfigSettings,
        *,
        secret_fields: SecretFieldResolver = no_secret_fields,
        audit: AuditLog | None = None,
    ) -> PgConfigStore:
        """Open the store: create the first version on an empty database, or check the current.

        The schema must be migrated (`corral store migrate`). A current version that no longer
        parses is rolled back to the newest valid one, loudly (`config.rollback` in `audit`);
        plaintext secret values are encrypted. Raises SecretKeyError when the key file is
        missing under HIPAA, when it holds none of the keys the database's secrets use, or when
        a stored secret does not decrypt; ConfigUnrecoverableError when no version is valid;
        StoreUnavailableError-derived ConfigWriteError when the database cannot be used.
        """
        if settings.is_hipaa and settings.secret_key_file is None:
            raise SecretKeyError("the HIPAA profile requires CORRAL_SECRET_KEY_FILE to be set")
        try:
            box = await _open_box(pool, settings)
        except SecretKeyError as exc:
            if audit is not None:
                details = {"reason": str(exc)[:_REASON_CHARS]}
                await audit.record(
                    "config.load", outcome="error", target=redact(url), details=details
                )
            raise
        except CONNECTION_ERRORS as exc:
            raise ConfigWriteError(redact(url), "the database is unavailable") from exc
        store = cls(pool, url, settings, box, secret_fields, audit)
        try:
            await store._run(store._ensure_first)
            rollback = await store._run(store._roll_back_if_damaged)
            snapshot = await store.refresh()
            await asyncio.to_thread(check_document, snapshot.document, store._box)
        except (ConfigUnrecoverableError, SecretKeyError) as exc:
            await store._record("config.load", "error", {"reason": str(exc)})
            raise
        if rollback is not None:
            await store._record("config.rollback", "success", rollback)
        await store.update(lambda doc: doc)  # encrypts any secret value stored in plaintext
        return store

    @property
    def version(self) -> int:
        """The version of the last snapshot read or written by this store (0 before any)."""
        return self._cache[0] if self._cache else 0

    async def load(self) -> ConfigSnapshot:
        """Return the current document (a copy the caller may change)."""
        snapshot = await self.peek()
        return await asyncio.to_thread(snapshot.copy)  # a deep copy: off the loop

    async def peek(self) -> ConfigSnapshot:
        """Return the current document without copying it: callers must not change it.

        When the database cannot be reached, the last version read is returned and the
        outage logged once (at error level) until a read succeeds again.
        """
        cached = self._cache
        try:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT h.version, CASE WHEN h.version = $1 THEN NULL ELSE v.document END "
                    "AS document FROM config_head h JOIN config_versions v USING (version)",
                    cached[0] if cached else 0,
                )
        except CONNECTION_ERRORS as exc:
            if cached is None:
                raise ConfigWriteError(self.path, "the database is unavailable") from exc
            if not self._degraded:
                self._degraded = True
                _log.error(
                    "config store %s unavailable (%s): serving version %d until it is back",
                    self.path,
                    type(exc).__name__,
                    cached[0],
                )
            return cached[1]
        if self._degraded:
            self._degraded = False
            _log.warning("config store %s is reachable again", self.path)
        if row is None:
            raise ConfigInvalidError(self.path, ["$: the database holds no config document"])
        if row["document"] is None and cached is not None:
            return cached[1]
        return await self._remember(row["version"], row["document"])

    async def refresh(self) -> ConfigSnapshot:
        """Read the current version afresh (the NOTIFY handler's call); return it."""
        self._cache = None
        return await self.peek()

    async def reread(self) -> ConfigSnapshot:
        """Re-read the document (SIGHUP): for the database this is `refresh`, checked.

        Raises SecretKeyError when a stored secret does not decrypt with the key file.
        """
        await asyncio.to_thread(self._box.refresh)
        snapshot = await self.refresh()
        await asyncio.to_thread(check_document, snapshot.document, self._box)
        return await asyncio.to_thread(snapshot.copy)

    async def update(
        self,
        mutator: Mutator,
        *,
        expected_etag: str | None = None,
        subtree: tuple[str, str] | None = None,
    ) -> ConfigSnapshot:
        """Apply `mutator` to the current version and store the result as the next, atomically.

        The head row is locked for the transaction, so writers on every host are serialized
        and each mutator sees the version it replaces. The mutator runs in a worker thread; its
        exceptions propagate, nothing written. Raises PreconditionFailedError on an ETag
        mismatch, ConfigInvalidError when the result does not validate, ConfigWriteError when
        the database cannot be written (nothing changed). Once the commit is sent, cancelling
        the caller does not undo it.
        """

        async def write(conn: Connection) -> tuple[int, ConfigSnapshot]:
            version, current = await _lock_head(conn)
            if expected_etag is not None:
                actual = current.plugin_etag(*subtree) if subtree else current.etag
                if expected_etag != actual:
                    scope = "/".join(subtree) if subtree else "document"
                    raise PreconditionFailedError(scope, expected_etag, actual)
            data = await asyncio.to_thread(self._apply, mutator, current)
            if data == current.data:
                return version, current
            return version + 1, await self._insert(conn, version + 1, data, "update")

        version, snapshot = await self._transaction(write)
        self._cache = (version, snapshot)
        return await asyncio.to_thread(snapshot.copy)

    async def plugin_config(self, tenant_id: str, plugin_id: str) -> dict[str, JsonValue]:
        """Return the plugin's settings for the tenant, decrypted: for its workers, never an API.

        Raises SecretKeyError when a stored secret cannot be decrypted.
        """
        snapshot = await self.peek()
        tenant = snapshot.document.tenants.get(tenant_id)
        settings = tenant.settings.plugins.get(plugin_id, {}) if tenant else {}
        return await asyncio.to_thread(decrypt_settings, self._box, tenant_id, plugin_id, settings)

    async def history(self) -> list[ConfigVersion]:
        """Return the versions kept, newest first."""
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT version, etag, reason, created_at FROM config_versions "
                "ORDER BY version DESC"
            )
        )
        return [ConfigVersion(r["version"], r["etag"], r["reason"], r["created_at"]) for r in rows]

    async def roll_back_to(self, version: int) -> ConfigSnapshot:
        """Store the content of kept `version` as the next version (audited `config.rollback`).

        Raises ConfigInvalidError when that version is not kept or no longer validates.
        """

        async def write(conn: Connection) -> tuple[int, ConfigSnapshot]:
            head, _ = await _lock_head(conn)
            text = await conn.fetchval(
                "SELECT document FROM config_versions WHERE version = $1", version
            )
            if text is None:
                raise ConfigInvalidError(self.path, [f"$: version {version} is not kept"])
            old = decode_document(text.encode(), f"version {version}")
            return head + 1, await self._insert(conn, head + 1, old.data, f"rollback:{version}")

        new_version, snapshot = await self._transaction(write)
        self._cache = (new_version, snapshot)
        await self._record("config.rollback", "success", {"restored_from": f"version {version}"})
        return await asyncio.to_thread(snapshot.copy)

    async def rotate_secret_key(self) -> KeyRotation:
        """Re-encrypt every secret of every kept version with a new key; retire the old ones.

        The local key file gets the new key first (the old ones after it) before the database
        changes, and loses the old ones only after the commit. The new key file must then be
        copied to every other host (docs/store-postgresql.md). Recorded as `config.rotate_key`.
        """
        try:
            rotation = await self._rotate()
        except ConfigError as exc:
            await self._record("config.rotate_key", "error", {"reason": str(exc)})
            raise
        await self._record("config.rotate_key", "success", rotation.audit_details())
        return rotation

    def features(self, snapshot: ConfigSnapshot) -> Features:
        """Return the feature flags in force: the document's, overridden by the environment."""
        return self.settings.features.apply(snapshot.document.features)

    def secret_fields(self, plugin_id: str) -> frozenset[str]:
        """Return the names of the plugin's secret config fields."""
        return self._secret_fields(plugin_id)

    # Internals.

    async def _ensure_first(self, conn: Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK)
            if await conn.fetchval("SELECT version FROM config_head") is not None:
                return
            _log.info("no config document in %s: creating the default one", self.path)
            first = decode_document(encode_document(default_document()), "the default document")
            await _insert_version(conn, 1, first, "create")
            await conn.execute("INSERT INTO config_head (version) VALUES (1)")

    async def _roll_back_if_damaged(self, conn: Connection) -> dict[str, Any] | None:
        """Replace a current version that no longer parses by the newest valid one."""
        async with conn.transaction():
            head = await conn.fetchval("SELECT version FROM config_head FOR UPDATE")
            rows = await conn.fetch(
                "SELECT version, document FROM config_versions ORDER BY version DESC"
            )
            reasons: dict[str, str] = {}
            for row in rows:
                try:
                    good = decode_document(row["document"].encode(), f"version {row['version']}")
                except ConfigInvalidError as exc:
                    reasons[f"version {row['version']}"] = str(exc)[:_REASON_CHARS]
                    continue
                if row["version"] == head:
                    return None
                await _insert_version(conn, head + 1, good, f"rollback:{row['version']}")
                await conn.execute("UPDATE config_head SET version = $1", head + 1)
                await _notify(conn, head + 1)
                reason = reasons.get(f"version {head}", "")
                _log.error(
                    "config version %d in %s is invalid; rolled back to version %d",
                    head,
                    self.path,
                    row["version"],
                )
                return {"restored_from": f"version {row['version']}", "reason": reason}
            raise ConfigUnrecoverableError(self.path, reasons)

    def _apply(self, mutator: Mutator, current: ConfigSnapshot) -> bytes:
        result = mutator(current.document.model_copy(deep=True))
        if not isinstance(result, ConfigDocument):
            raise TypeError(f"the mutator returned {type(result).__name__}, not a document")
        doc = _revalidate(result)
        self._box.refresh()  # another process may have rotated the key
        encrypt_document(doc, self._box, self._secret_fields)
        return encode_document(doc)

    async def _insert(
        self, conn: Connection, version: int, data: bytes, reason: str
    ) -> ConfigSnapshot:
        snapshot = await asyncio.to_thread(decode_document, data, f"version {version}")
        await _insert_version(conn, version, snapshot, reason)
        await conn.execute("UPDATE config_head SET version = $1", version)
        keep = self.settings.backups + 1
        await conn.execute("DELETE FROM config_versions WHERE version <= $1", version - keep)
        await _notify(conn, version)
        return snapshot

    async def _remember(self, version: int, text: str) -> ConfigSnapshot:
        snapshot = await asyncio.to_thread(decode_document, text.encode(), f"version {version}")
        if self._cache is None or version >= self._cache[0]:
            self._cache = (version, snapshot)
        return snapshot

    async def _rotate(self) -> KeyRotation:
        new = SecretKey.generate()
        old: list[SecretKey] = []

        async def write(conn: Connection) -> tuple[int, tuple[int, list[str]]]:
            head, current = await _lock_head(conn)
            old.extend(self._box.keys)
            await asyncio.to_thread(self._box.use, [new, *old])
            doc = current.document.model_copy(deep=True)
            count = await asyncio.to_thread(reencrypt_document, doc, self._box, new)
            await self._insert(conn, head + 1, encode_document(doc), "rotate_key")
            rows = await conn.fetch("SELECT version, document FROM config_versions")
            files = [f"version {head + 1}"]
            for row in rows:
                if row["version"] == head + 1:
                    continue
                data = await asyncio.to_thread(self._reencrypt, row["document"], new)
                await conn.execute(
                    "UPDATE config_versions SET document = $2, etag = $3 WHERE version = $1",
                    row["version"],
                    data.decode(),
                    decode_document(data, "rotated").etag,
                )
                files.append(f"version {row['version']}")
            await conn.execute("DELETE FROM secret_keys")
            await conn.execute("INSERT INTO secret_keys (key_id) VALUES ($1)", new.key_id)
            return head + 1, (count, files)

        await asyncio.to_thread(self._box.refresh)
        try:
            _, (count, files) = await self._transaction(write)
        except BaseException:
            if old:  # nothing committed: the new key must not encrypt what others cannot read
                await asyncio.to_thread(self._box.use, old)
            raise
        await asyncio.to_thread(self._box.use, [new])
        self._cache = None
        retired = [k.key_id for k in old]
        _log.info("secret key rotated to %s; retired %s", new.key_id, ", ".join(retired))
        return KeyRotation(new.key_id, retired, count, files, {})

    def _reencrypt(self, text: str, key: SecretKey) -> bytes:
        doc = decode_document(text.encode(), "a kept version").document.model_copy(deep=True)
        reencrypt_document(doc, self._box, key)
        return encode_document(doc)

    async def _transaction(
        self, work: Callable[[Connection], Awaitable[tuple[int, _T]]]
    ) -> tuple[int, _T]:
        """Run `work` in one transaction, shielded: once started it commits or rolls back."""

        async def run(conn: Connection) -> tuple[int, _T]:
            async with conn.transaction():
                return await work(conn)

        return await asyncio.shield(self._run(run))

    async def _run(self, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        try:
            async with self._pool.acquire() as conn:
                return await work(conn)
        except CONNECTION_ERRORS as exc:
            _log.error("config store %s: %s", self.path, type(exc).__name__)
            raise ConfigWriteError(self.path, "the database is unavailable") from exc

    async def _record(self, action: str, outcome: Any, details: dict[str, Any]) -> None:
        if self._audit is None:
            return
        if isinstance(details.get("reason"), str):
            details["reason"] = details["reason"][:_REASON_CHARS]
        await self._audit.record(action, outcome=outcome, target=self.path, details=details)


async def _open_box(pool: Pool, settings: ConfigSettings) -> SecretBox:
    """Open the key file, generating one only when the database knows no key yet."""
    async with pool.acquire() as conn:
        registered = set(await conn.fetchval("SELECT array_agg(key_id) FROM secret_keys") or [])
    key_file = settings.key_file
    if registered and not await asyncio.to_thread(key_file.exists):
        raise SecretKeyError(
            f"the secret key file {key_file} does not exist, and the database's secrets use "
            "a key other hosts hold: copy their key file here (it is never generated then)"
        )
    create = not settings.is_hipaa and not registered
    box = await asyncio.to_thread(
        SecretBox.open, key_file, create=create, strict_mode=settings.is_hipaa
    )
    if registered and not registered & set(box.key_ids):
        raise SecretKeyError(
            f"the secret key file {key_file} holds none of the keys the database uses "
            f"({', '.join(sorted(registered))}): every host needs the same key file"
        )
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO secret_keys (key_id) VALUES ($1) ON CONFLICT DO NOTHING",
            box.primary.key_id,
        )
    return box


async def _lock_head(conn: Connection) -> tuple[int, ConfigSnapshot]:
    # Two statements, not a join: under READ COMMITTED a join locked FOR UPDATE re-checks only
    # the locked row after waiting, and would pair the new head with the old version's row.
    version = await conn.fetchval("SELECT version FROM config_head FOR UPDATE")
    text = await conn.fetchval("SELECT document FROM config_versions WHERE version = $1", version)
    snapshot = await asyncio.to_thread(decode_document, text.encode(), f"version {version}")
    return int(version), snapshot


async def _insert_version(
    conn: Connection, version: int, snapshot: ConfigSnapshot, reason: str
) -> None:
    await conn.execute(
        "INSERT INTO config_versions (version, document, etag, reason) VALUES ($1, $2, $3, $4)",
        version,
        snapshot.data.decode(),
        snapshot.etag,
        reason,
    )


async def _notify(conn: Connection, version: int) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(version))
