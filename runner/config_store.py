"""The config store: the `ConfigStore` seam, and `JsonConfigStore`, one JSON document on disk.

Writes are serialized across tasks and processes, atomic, and keep numbered backups; start-up
rolls a damaged document back to the newest valid backup, loudly, or refuses. Secret values are
encrypted before they reach the disk. What the document means is `config_model`'s business;
file mechanics are `config_files`', cryptography `config_secrets`'.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any, Final, Protocol

from pydantic import JsonValue, ValidationError

from .audit import AuditLog
from .config_errors import (
    ConfigError,
    ConfigInvalidError,
    ConfigUnrecoverableError,
    ConfigWriteError,
    PreconditionFailedError,
    SecretKeyError,
)
from .config_files import (
    PRIVATE_FILE,
    ensure_private_dir,
    exclusive_lock,
    remove_stale_temps,
    write_atomically,
)
from .config_model import ConfigDocument, Features, default_document, validation_problems
from .config_recovery import Rollback, list_backups, prune_backups, roll_back, seal_backups
from .config_rotation import KeyRotation, rotate_key
from .config_secrets import (
    SecretBox,
    SecretFieldResolver,
    check_document,
    decrypt_settings,
    encrypt_document,
    no_secret_fields,
)
from .config_settings import ConfigSettings
from .config_snapshot import ConfigSnapshot, decode_document, encode_document

_log = logging.getLogger(__name__)
_REASON_CHARS: Final = 200

Mutator = Callable[[ConfigDocument], ConfigDocument]


class ConfigStore(Protocol):
    """Where the config document lives: a JSON file now, a database later (issue 9)."""

    async def load(self) -> ConfigSnapshot:
        """Return the current document (secrets encrypted) with its ETags."""
        ...

    async def peek(self) -> ConfigSnapshot:
        """Return the current document without a copy; the caller must not change it."""
        ...

    async def update(
        self,
        mutator: Mutator,
        *,
        expected_etag: str | None = None,
        subtree: tuple[str, str] | None = None,
    ) -> ConfigSnapshot:
        """Apply `mutator` to a copy of the current document, store the result, return it.

        `expected_etag`, when given, must equal the document's ETag, or the ETag of the
        (tenant, plugin) `subtree`; otherwise PreconditionFailedError and nothing is written.
        """
        ...

    async def plugin_config(self, tenant_id: str, plugin_id: str) -> dict[str, JsonValue]:
        """Return a plugin's settings for a tenant with secrets decrypted, for its workers."""
        ...

    async def rotate_secret_key(self) -> KeyRotation:
        """Re-encrypt every stored secret with a new key, then retire the old keys."""
        ...

    def features(self, snapshot: ConfigSnapshot) -> Features:
        """Return the feature flags in force for `snapshot` (environment overrides applied)."""
        ...

    def secret_fields(self, plugin_id: str) -> frozenset[str]:
        """Return the names of the plugin's secret config fields."""
        ...


class JsonConfigStore:
    """The document at `settings.path`. Build with `await JsonConfigStore.open(settings)`.

    `secret_fields(plugin_id)` names the plugin's secret config fields (from its manifest); the
    store encrypts them on every write, also values written before the field became secret.
    """

    def __init__(
        self,
        settings: ConfigSettings,
        box: SecretBox,
        secret_fields: SecretFieldResolver,
        audit: AuditLog | None,
    ) -> None:
        self.settings = settings
        self.path = settings.path
        self.rollback: Rollback | None = None
        self._box = box
        self._secret_fields = secret_fields
        self._audit = audit
        self._lock = asyncio.Lock()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._cache: tuple[tuple[int, ...], ConfigSnapshot] | None = None

    @classmethod
    async def open(
        cls,
        settings: ConfigSettings,
        *,
        secret_fields: SecretFieldResolver = no_secret_fields,
        audit: AuditLog | None = None,
    ) -> JsonConfigStore:
        """Open the store: roll back a missing, corrupt or invalid document, or create a fresh one.

        A fresh install (no document, no backup) gets the default document. A rollback is logged
        at error level and recorded as `config.rollback` in `audit`. Raises
        ConfigUnrecoverableError when no valid version exists, and SecretKeyError when the key
        file is missing under the HIPAA profile or the stored secrets do not decrypt with it.
        """
        if settings.is_hipaa and settings.secret_key_file is None:
            raise SecretKeyError("the HIPAA profile requires CORRAL_SECRET_KEY_FILE to be set")
        if await asyncio.to_thread(ensure_private_dir, settings.path.parent):
            _log.warning(
                "the config directory %s is world-accessible; make it 0700 (the files are 0600)",
                settings.path.parent,
            )
        box = await asyncio.to_thread(
            SecretBox.open,
            settings.key_file,
            create=not settings.is_hipaa,
            strict_mode=settings.is_hipaa,
        )
        store = cls(settings, box, secret_fields, audit)
        try:
            store.rollback = await asyncio.to_thread(store._start)
        except (ConfigUnrecoverableError, SecretKeyError) as exc:
            await store._record("config.load", "error", {"reason": str(exc)})
            raise
        if store.rollback is not None:
            r = store.rollback
            details = {"restored_from": r.restored_from, "reason": r.reason}
            await store._record("config.rollback", "success", details)
        return store

    async def load(self) -> ConfigSnapshot:
        """Return the current document; never a partial one (writes replace the file whole).

        If the file was damaged behind the store's back, the last good version is returned and
        the damage logged at error level (writes refuse until a restart rolls back).
        """
        return await asyncio.to_thread(lambda: self._load().copy())

    async def update(
        self,
        mutator: Mutator,
        *,
        expected_etag: str | None = None,
        subtree: tuple[str, str] | None = None,
    ) -> ConfigSnapshot:
        """Apply `mutator` to a copy of the document and store what it returns, atomically.

        The mutator runs in a worker thread while the store is locked: it must be quick and
        touch nothing but the document it is given; its exceptions propagate, nothing written.
        Raises PreconditionFailedError on an ETag mismatch, ConfigInvalidError when the result
        does not validate, ConfigWriteError when the disk refuses (the old document stays). If
        the caller is cancelled, the write may still complete.
        """
        # The copy (a deep copy of the whole document) is made in the thread too: with
        # thousands of tenants it takes long enough to stall the loop.
        async with self._lock:
            return await asyncio.to_thread(
                lambda: self._update(mutator, expected_etag, subtree).copy()
            )

    async def reread(self) -> ConfigSnapshot:
        """Read the document from disk afresh (edited by hand, or restored) and return it.

        Unlike `load`, damage is not papered over: raises ConfigInvalidError when the file is
        missing, unreadable, not JSON or not a valid document, and SecretKeyError when a stored
        secret does not decrypt. The file is then left as it is, for the operator to fix or
        restore (never rolled back behind their back); reads serve the last version that
        parsed (`load`), and writes refuse while the file does not parse. Secret fields found
        in plaintext are encrypted, in the backups too, as at start-up.
        """
        async with self._lock:
            return await asyncio.to_thread(lambda: self._reread().copy())

    async def peek(self) -> ConfigSnapshot:
        """Return the current document without copying it: callers must not change it.

        For hot read paths (authenticating a key on every request); `load` for anything else.
        """
        return await asyncio.to_thread(self._load)

    async def plugin_config(self, tenant_id: str, plugin_id: str) -> dict[str, JsonValue]:
        """Return the plugin's settings for the tenant, decrypted: for its workers, never an API.

        Raises SecretKeyError when a stored secret cannot be decrypted.
        """
        snapshot = await asyncio.to_thread(self._load)
        tenant = snapshot.document.tenants.get(tenant_id)
        settings = tenant.settings.plugins.get(plugin_id, {}) if tenant else {}
        return await asyncio.to_thread(decrypt_settings, self._box, tenant_id, plugin_id, settings)

    async def rotate_secret_key(self) -> KeyRotation:
        """Re-encrypt every secret (document and backups) with a new key; retire the old ones.

        Until it completes, the key file holds the new key first and the old ones after it,
        so every process can read every value at every moment. Recorded as `config.rotate_key`.
        """
        try:
            async with self._lock:
                rotation = await asyncio.to_thread(self._rotate)
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

    async def _record(self, action: str, outcome: Any, details: dict[str, Any]) -> None:
        if self._audit is None:
            return
        if isinstance(details.get("reason"), str):
            details["reason"] = details["reason"][:_REASON_CHARS]
        await self._audit.record(action, outcome=outcome, target=str(self.path), details=details)

    # The rest runs in worker threads.

    def _start(self) -> Rollback | None:
        with exclusive_lock(self._lock_path):
            for stale in remove_stale_temps(self.path):
                _log.info("removed %s, left by an interrupted write", stale)
            rollback = None
            try:
                self._read()
            except FileNotFoundError:
                if not list_backups(self.path):
                    _log.info("no config document at %s: creating the default one", self.path)
                    self._write(encode_document(default_document()), backups=0)
                    return None
                rollback = roll_back(self.path, "the file is missing", self._box, self._restore)
            except ConfigInvalidError as exc:
                rollback = roll_back(self.path, str(exc), self._box, self._restore)
            snapshot = self._read()
            if os.stat(self.path).st_mode & 0o777 != PRIVATE_FILE:
                os.chmod(self.path, PRIVATE_FILE)
            check_document(snapshot.document, self._box)  # a wrong key file refuses here
            doc = snapshot.document.model_copy(deep=True)
            if encrypt_document(doc, self._box, self._secret_fields):
                _log.warning("encrypted secret values found in plaintext in %s", self.path)
                self._write(encode_document(doc), backups=self.settings.backups)
            seal_backups(self.path, self._box, self._secret_fields)
            prune_backups(self.path, self.settings.backups)
            return rollback

    def _reread(self) -> ConfigSnapshot:
        with exclusive_lock(self._lock_path):
            try:
                snapshot = self._read()
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise ConfigInvalidError(self.path.name, [f"$: cannot read: {reason}"]) from exc
            self._box.refresh()  # `corral config rotate-key` may have run meanwhile
            check_document(snapshot.document, self._box)
            doc = snapshot.document.model_copy(deep=True)
            if encrypt_document(doc, self._box, self._secret_fields):
                _log.warning("encrypted secret values found in plaintext in %s", self.path)
                self._write(encode_document(doc), backups=self.settings.backups)
                seal_backups(self.path, self._box, self._secret_fields)
                snapshot = self._read()
            return snapshot

    def _restore(self, data: bytes) -> None:
        self._write(data, backups=0)  # a damaged file must not push the good backups out

    def _read(self) -> ConfigSnapshot:
        with self.path.open("rb") as f:
            stamp = _stamp(os.fstat(f.fileno()))
            snapshot = decode_document(f.read(), self.path.name)
        self._cache = (stamp, snapshot)
        return snapshot

    def _load(self) -> ConfigSnapshot:
        try:
            if self._cache is not None and _stamp(os.stat(self.path)) == self._cache[0]:
                return self._cache[1]
            return self._read()
        except (OSError, ConfigInvalidError) as exc:
            if self._cache is None:
                raise
            _log.error(
                "config document %s became unreadable (%s); serving the last good version, "
                "writes refuse until a restart rolls back",
                self.path,
                exc,
            )
            return self._cache[1]

    def _update(
        self, mutator: Mutator, expected: str | None, subtree: tuple[str, str] | None
    ) -> ConfigSnapshot:
        with exclusive_lock(self._lock_path):
            current = self._read()
            if expected is not None:
                actual = current.plugin_etag(*subtree) if subtree else current.etag
                if expected != actual:
                    scope = "/".join(subtree) if subtree else "document"
                    raise PreconditionFailedError(scope, expected, actual)
            result = mutator(current.document.model_copy(deep=True))
            if not isinstance(result, ConfigDocument):
                raise TypeError(f"the mutator returned {type(result).__name__}, not a document")
            doc = _revalidate(result)
            self._box.refresh()  # another process may have rotated the key
            encrypt_document(doc, self._box, self._secret_fields)
            data = encode_document(doc)
            if data == current.data:
                return current
            self._write(data, backups=self.settings.backups)
            return self._read()

    def _write(self, data: bytes, *, backups: int) -> None:
        try:
            write_atomically(self.path, data, mode=PRIVATE_FILE, backups=backups)
        except OSError as exc:
            _log.error("config write to %s failed: %s", self.path, exc)
            raise ConfigWriteError(str(self.path), exc.strerror or str(exc)) from exc

    def _rotate(self) -> KeyRotation:
        with exclusive_lock(self._lock_path):
            rotation = rotate_key(
                self.path, list_backups(self.path), self._box, self._secret_fields, self._write
            )
            self._cache = None
            return rotation


def _revalidate(doc: ConfigDocument) -> ConfigDocument:
    """Validate a mutator's result afresh: assignments to a model are not validated."""
    try:
        return ConfigDocument.model_validate(doc.model_dump(warnings=False))
    except ValidationError as exc:
        problems = validation_problems(exc)
    # Outside the handler: pydantic's error quotes input values (secrets, maybe); keep it out.
    raise ConfigInvalidError("the updated document", problems)


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


__all__ = [
    "ConfigSnapshot",
    "ConfigStore",
    "JsonConfigStore",
    "KeyRotation",
    "Mutator",
    "Rollback",
]
