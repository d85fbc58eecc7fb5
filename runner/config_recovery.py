"""Start-up recovery of the config document: roll back to the newest valid backup, loudly.

Also the start-up chores on backups: sealing plaintext secrets in them, pruning generations
above the configured count. The store calls these under its lock; they block.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .config_errors import ConfigInvalidError, ConfigUnrecoverableError, SecretKeyError
from .config_files import PRIVATE_FILE, backup_path, glob_escape, write_atomically
from .config_secrets import SecretBox, SecretFieldResolver, check_document, encrypt_document
from .config_snapshot import decode_document, encode_document

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rollback:
    """What start-up did with a damaged document: which backup replaced it, and why."""

    restored_from: str
    reason: str
    moved_aside: str | None  # where the damaged document was kept for inspection, if it existed
    rejected: dict[str, str] = field(default_factory=dict)  # newer backups that were unusable


def list_backups(path: Path) -> list[Path]:
    """Return the backups of `path` that exist, newest (`.bak.1`) first."""
    prefix = backup_path(path, 1).name[:-1]
    numbers = sorted(
        int(p.name[len(prefix) :])
        for p in path.parent.glob(f"{glob_escape(prefix)}*")
        if p.name[len(prefix) :].isdigit()
    )
    return [backup_path(path, n) for n in numbers]


def roll_back(path: Path, reason: str, box: SecretBox, write: Callable[[bytes], None]) -> Rollback:
    """Replace the unusable document at `path` with its newest valid backup; log at error level.

    A backup is valid when it parses, validates and its secrets decrypt. The damaged document
    is kept as `<name>.corrupt-<UTC time>`; backups are not rotated, so it cannot push a good
    one out. `write(data)` replaces the document. Raises ConfigUnrecoverableError, naming each
    file and why it was rejected, when no backup is valid.
    """
    _log.error("config document %s is unusable: %s", path, reason)
    rejected: dict[str, str] = {}
    for backup in list_backups(path):
        try:
            snapshot = decode_document(backup.read_bytes(), backup.name)
            check_document(snapshot.document, box)
        except (OSError, ConfigInvalidError, SecretKeyError) as exc:
            rejected[backup.name] = str(exc)
            continue
        aside = None
        if path.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            os.replace(path, aside)
        write(snapshot.data)
        _log.error(
            "ROLLED BACK %s to %s%s; the damaged document was kept as %s",
            path,
            backup.name,
            f" (newer backups unusable: {', '.join(rejected)})" if rejected else "",
            aside.name if aside else "(none: it was missing)",
        )
        return Rollback(backup.name, reason, aside.name if aside else None, rejected)
    raise ConfigUnrecoverableError(str(path), {path.name: reason, **rejected})


def seal_backups(path: Path, box: SecretBox, secret_fields: SecretFieldResolver) -> None:
    """Encrypt secrets found in plaintext in the backups (a field newly marked secret)."""
    for backup in list_backups(path):
        try:
            doc = decode_document(backup.read_bytes(), backup.name).document
        except (OSError, ConfigInvalidError):
            continue  # never a rollback candidate
        if encrypt_document(doc, box, secret_fields):
            _log.warning("encrypted secret values found in plaintext in %s", backup)
            write_atomically(backup, encode_document(doc), mode=PRIVATE_FILE)


def prune_backups(path: Path, keep: int) -> None:
    """Remove backup generations above `keep` (left by a larger earlier setting)."""
    for backup in list_backups(path)[keep:]:
        _log.info("removing %s: only %d backups are kept", backup, keep)
        backup.unlink()
