"""Secret-key rotation: re-encrypt every stored secret with a new key, then retire the old ones.

The order keeps every value readable at every moment, by every process: first the key file gets
the new key in front of the old ones, then the document and each backup are rewritten (each
atomically), and only then are the old keys dropped from the key file. A crash part-way leaves
both keys in the file; running the rotation again completes it. The caller holds the store lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config_errors import ConfigInvalidError, SecretKeyError
from .config_files import PRIVATE_FILE, write_atomically
from .config_secrets import SecretBox, SecretFieldResolver, SecretKey, encrypt_document
from .config_secrets import reencrypt_document as _reencrypt
from .config_snapshot import decode_document, encode_document

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """What a rotation did: the new key's id, the retired ids, and the files rewritten."""

    key_id: str
    retired: list[str]
    secrets: int  # values re-encrypted in the document
    files: list[str]  # the document and the backups rewritten with the new key
    skipped: dict[str, str]  # backups left as they were (unreadable), and why

    def audit_details(self) -> dict[str, str | int]:
        """Return what `config.rotate_key` records: counts and ids, never key material."""
        return {
            "key_id": self.key_id,
            "retired": ",".join(self.retired),
            "secrets": self.secrets,
            "files": len(self.files),
            "skipped": len(self.skipped),
        }


def rotate_key(
    path: Path,
    backups: list[Path],
    box: SecretBox,
    secret_fields: SecretFieldResolver,
    write_document: Callable[..., None],
) -> KeyRotation:
    """Rotate the key of `box` over the document at `path` and its `backups`; block.

    `write_document(data, backups=0)` replaces the document. Raises ConfigInvalidError if the
    document itself is unreadable (the key file then still holds every key, so nothing is
    lost) and SecretKeyError if one of its secrets does not decrypt.
    """
    box.refresh()
    old = box.keys
    new = SecretKey.generate()
    box.use([new, *old])
    snapshot = decode_document(path.read_bytes(), path.name)
    doc = snapshot.document.model_copy(deep=True)
    count = _reencrypt(doc, box, new)
    encrypt_document(doc, box, secret_fields)
    write_document(encode_document(doc), backups=0)
    files = [path.name]
    skipped: dict[str, str] = {}
    for backup in backups:
        try:
            copy = decode_document(backup.read_bytes(), backup.name).document.model_copy(deep=True)
            _reencrypt(copy, box, new)
            write_atomically(backup, encode_document(copy), mode=PRIVATE_FILE)
        except (OSError, ConfigInvalidError, SecretKeyError) as exc:
            _log.warning("backup %s keeps its old encryption: %s", backup, exc)
            skipped[backup.name] = str(exc)
            continue
        files.append(backup.name)
    box.use([new])
    retired = [k.key_id for k in old]
    _log.info("secret key rotated to %s; retired %s", new.key_id, ", ".join(retired))
    return KeyRotation(new.key_id, retired, count, files, skipped)
