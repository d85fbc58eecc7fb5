"""The bootstrap API key: the operator's first key, with every scope, operator-wide.

It is read from `CORRAL_BOOTSTRAP_KEY_FILE` when that is set; otherwise it is generated once, at
the first start (no key records yet), into a 0600 file whose path is logged. The key itself is
never logged. Key records live in the `KeyRepository`; this module only seeds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from .auth import generate_key, hash_key, parse_key
from .errors import RunnerError
from .keys import ALL_SCOPES, KeyRecord, KeyRepository

BOOTSTRAP_KEY_ENV: Final = "CORRAL_BOOTSTRAP_KEY_FILE"
BOOTSTRAP_NAME: Final = "bootstrap"
_MAX_FILE_BYTES: Final = 4096

_log = logging.getLogger(__name__)


class BootstrapKeyError(RunnerError):
    """The bootstrap key file is unusable; the host should refuse to start. `path` names it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"bootstrap key file {path}: {reason}")
        self.path = path
        self.reason = reason


async def ensure_bootstrap_key(
    repository: KeyRepository, default_path: Path, *, environ: Mapping[str, str] = os.environ
) -> Path | None:
    """Make sure the bootstrap key is registered; return the file holding it, or None.

    The file is `$CORRAL_BOOTSTRAP_KEY_FILE` if set (it must exist), else `default_path` if it
    exists; its key is registered unless already known. With neither, a key is generated into
    `default_path` only if the repository holds no records at all. A revoked bootstrap key
    stays revoked. Raises `BootstrapKeyError` for a missing, malformed or conflicting file.
    """
    configured = environ.get(BOOTSTRAP_KEY_ENV)
    path = Path(configured) if configured else default_path
    if configured or path.exists():
        key = await asyncio.to_thread(_read_key_file, path)
        await _register(repository, key, path)
        return path
    if await repository.list_all():
        _log.info("no bootstrap key file at %s; API keys already exist", path)
        return None
    key_id, key = generate_key()
    await asyncio.to_thread(_write_key_file, path, key)
    await _register(repository, key, path)
    _log.warning(
        "generated the bootstrap API key %s (every scope, operator-wide) into %s; "
        "it is shown nowhere else",
        key_id,
        path,
    )
    return path


async def _register(repository: KeyRepository, key: str, path: Path) -> None:
    parsed = parse_key(key)
    if parsed is None:
        raise BootstrapKeyError(path, "does not hold a well-formed corral API key")
    key_id = parsed[0]
    digest = hash_key(key)
    existing = await repository.get(key_id)
    if existing is not None:
        if existing.hash != digest:
            raise BootstrapKeyError(path, f"key id {key_id} belongs to a different key")
        if existing.is_revoked:
            _log.warning("the bootstrap key %s in %s is revoked; it stays refused", key_id, path)
        return
    record = KeyRecord(
        id=key_id,
        name=BOOTSTRAP_NAME,
        hash=digest,
        scopes=ALL_SCOPES,
        tenant_id=None,
        created_at=datetime.now(UTC),
    )
    await repository.add(record)
    _log.info("registered the bootstrap API key %s from %s", key_id, path)


def _read_key_file(path: Path) -> str:
    try:
        info = path.stat()
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise BootstrapKeyError(path, exc.strerror or "cannot be read") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning(
            "bootstrap key file %s is open to group or others (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(info.st_mode),
        )
    if len(raw) > _MAX_FILE_BYTES:
        raise BootstrapKeyError(path, "is too large to hold one key")
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise BootstrapKeyError(path, "does not hold a well-formed corral API key") from exc


def _write_key_file(path: Path, key: str) -> None:
    """Write `key` into a new 0600 file at `path`, whole or not at all."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, f"{key}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise BootstrapKeyError(path, f"cannot be written: {exc.strerror}") from exc
