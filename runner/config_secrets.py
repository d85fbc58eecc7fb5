"""Secret config values at rest: the key file, AES-GCM encryption, masking, and merging.

A secret value is stored as `{"$enc": "v1:<key id>:<base64url(nonce | ciphertext)>"}`, bound to
where it sits (tenant, plugin, field) so a ciphertext copied elsewhere does not decrypt. Which
fields are secret is the caller's knowledge (the manifests); this module only applies it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import JsonValue

from .config_errors import ConfigInvalidError, SecretKeyError, SecretsMaskedError
from .config_files import PRIVATE_FILE, create_exclusively, ensure_private_dir, write_atomically
from .config_model import ConfigDocument, PluginSettings

MASK: Final = "***"
ENC_KEY: Final = "$enc"
_FORMAT: Final = "v1"
_KEY_PREFIX: Final = "corral-key-v1:"
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_KEY_FILE_HEADER: Final = (
    "# corral secret keys. The first key encrypts; any others only decrypt, during a rotation.\n"
    "# Keep this file 0600 and out of backups of the config directory.\n"
)
_log = logging.getLogger(__name__)

SecretFieldResolver = Callable[[str], frozenset[str]]


def no_secret_fields(plugin_id: str) -> frozenset[str]:
    """A resolver that knows no secret fields (values already encrypted stay encrypted)."""
    return frozenset()


@dataclass(frozen=True, slots=True)
class SecretKey:
    """A 256-bit AES key and its id (a digest of the key, safe to log and store)."""

    material: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """The key's id: 16 hex digits derived from the key."""
        return hashlib.sha256(b"corral-key-id:" + self.material).hexdigest()[:16]

    @classmethod
    def generate(cls) -> SecretKey:
        """Return a new random key."""
        return cls(AESGCM.generate_key(bit_length=_KEY_BYTES * 8))


def read_key_file(path: Path) -> list[SecretKey]:
    """Return the keys in `path`, the encrypting one first; raise SecretKeyError if unusable."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretKeyError(f"cannot read the secret key file {path}: {exc}") from exc
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(_KEY_PREFIX):
            raise SecretKeyError(f"{path} line {number}: expected {_KEY_PREFIX}<base64url key>")
        try:
            material = base64.urlsafe_b64decode(line[len(_KEY_PREFIX) :])
        except (binascii.Error, ValueError):
            material = b""
        if len(material) != _KEY_BYTES:
            raise SecretKeyError(f"{path} line {number}: not a {_KEY_BYTES}-byte base64url key")
        keys.append(SecretKey(material))
    if not keys:
        raise SecretKeyError(f"the secret key file {path} holds no key")
    return keys


def write_key_file(path: Path, keys: Sequence[SecretKey]) -> None:
    """Replace the key file atomically (0600) with `keys`, the encrypting one first."""
    write_atomically(path, _key_file_bytes(keys), mode=PRIVATE_FILE)


def _key_file_bytes(keys: Sequence[SecretKey]) -> bytes:
    lines = [_KEY_PREFIX + base64.urlsafe_b64encode(k.material).decode() for k in keys]
    return (_KEY_FILE_HEADER + "\n".join(lines) + "\n").encode()


class SecretBox:
    """Encrypt and decrypt secret values with the keys of one key file.

    The file is re-read when it changes on disk (a rotation by another process), checked by
    `refresh()` before each write and whenever a value names a key this box does not hold.
    Methods block briefly (a stat); async callers use a thread.
    """

    def __init__(self, path: Path, keys: Sequence[SecretKey]) -> None:
        self.path = path
        self._keys = list(keys)
        self._stamp = self._file_stamp()

    @classmethod
    def open(cls, path: Path, *, create: bool, strict_mode: bool) -> SecretBox:
        """Open the key file at `path`, generating one (0600) when absent and `create` is true.

        `strict_mode` (HIPAA) refuses a key file readable by others; otherwise that is a warning.
        Raises SecretKeyError when the file is missing (and may not be created) or unusable.
        """
        if not path.exists():
            if not create:
                raise SecretKeyError(
                    f"the secret key file {path} does not exist; the HIPAA profile requires "
                    "CORRAL_SECRET_KEY_FILE to name an existing key file (it is never generated)"
                )
            ensure_private_dir(path.parent)
            # Exclusive: two processes opening a fresh store at once must not each keep a key.
            if create_exclusively(path, _key_file_bytes([SecretKey.generate()])):
                _log.warning("generated a new secret key file at %s (mode 0600)", path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            if strict_mode:
                raise SecretKeyError(f"the secret key file {path} has mode {mode:o}; use 0600")
            _log.warning("the secret key file %s has mode %o; it should be 0600", path, mode)
        return cls(path, read_key_file(path))

    @property
    def primary(self) -> SecretKey:
        """The key new values are encrypted with."""
        return self._keys[0]

    @property
    def keys(self) -> list[SecretKey]:
        """Every key held, the encrypting one first."""
        return list(self._keys)

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key held, the encrypting one first."""
        return [k.key_id for k in self._keys]

    def refresh(self) -> None:
        """Re-read the key file if it changed since it was last read."""
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._keys = read_key_file(self.path)
            self._stamp = stamp

    def use(self, keys: Sequence[SecretKey]) -> None:
        """Write `keys` to the key file (the first encrypts) and use them from now on."""
        write_key_file(self.path, keys)
        self._keys = list(keys)
        self._stamp = self._file_stamp()

    def encrypt(
        self, value: JsonValue, where: str, key: SecretKey | None = None
    ) -> dict[str, JsonValue]:
        """Return the stored form of `value`, bound to `where` (tenant/plugin/field)."""
        key = key or self.primary
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = json.dumps(value, separators=(",", ":")).encode()
        sealed = AESGCM(key.material).encrypt(nonce, plaintext, where.encode())
        token = base64.urlsafe_b64encode(nonce + sealed).decode()
        return {ENC_KEY: f"{_FORMAT}:{key.key_id}:{token}"}

    def decrypt(self, stored: Mapping[str, object], where: str) -> JsonValue:
        """Return the plaintext of a stored value; raise SecretKeyError if it cannot be read."""
        parts = str(stored.get(ENC_KEY, "")).split(":", 2)
        if len(parts) != 3 or parts[0] != _FORMAT:
            raise SecretKeyError(f"{where}: not a {_FORMAT}:<key id>:<data> encrypted value")
        _, key_id, token = parts
        key = self._find(key_id)
        try:
            raw = base64.urlsafe_b64decode(token)
            plaintext = AESGCM(key.material).decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], where.encode()
            )
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise SecretKeyError(
                f"{where}: the value does not decrypt with key {key_id} (tampered or moved)"
            ) from exc
        result: JsonValue = json.loads(plaintext)
        return result

    def _find(self, key_id: str) -> SecretKey:
        for attempt in range(2):
            for key in self._keys:
                if key.key_id == key_id:
                    return key
            if attempt == 0:
                self.refresh()
        raise SecretKeyError(
            f"a secret is encrypted with key {key_id}, which is not in {self.path} "
            f"(it holds {', '.join(self.key_ids)})"
        )

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)


def is_encrypted(value: object) -> bool:
    """Return whether `value` is the stored form of a secret."""
    return isinstance(value, dict) and set(value) == {ENC_KEY} and isinstance(value[ENC_KEY], str)


def location(tenant_id: str, plugin_id: str, name: str) -> str:
    """Return the binding string of a secret: where it sits in the document."""
    return f"{tenant_id}/{plugin_id}/{name}"


def _subtrees(doc: ConfigDocument) -> Iterator[tuple[str, str, PluginSettings]]:
    for tenant_id, tenant in doc.tenants.items():
        for plugin_id, settings in tenant.settings.plugins.items():
            yield tenant_id, plugin_id, settings


def encrypt_document(
    doc: ConfigDocument, box: SecretBox, secret_fields: SecretFieldResolver
) -> int:
    """Encrypt, in place, every plaintext value of a secret field; return how many."""
    count = 0
    for tenant_id, plugin_id, settings in _subtrees(doc):
        for name in secret_fields(plugin_id) & settings.keys():
            value = settings[name]
            if value is not None and not is_encrypted(value):
                settings[name] = box.encrypt(value, location(tenant_id, plugin_id, name))
                count += 1
    return count


def reencrypt_document(doc: ConfigDocument, box: SecretBox, key: SecretKey) -> int:
    """Re-encrypt, in place, every stored secret with `key`; return how many."""
    count = 0
    for tenant_id, plugin_id, settings in _subtrees(doc):
        for name, value in settings.items():
            if is_encrypted(value):
                assert isinstance(value, dict)
                where = location(tenant_id, plugin_id, name)
                settings[name] = box.encrypt(box.decrypt(value, where), where, key)
                count += 1
    return count


def check_document(doc: ConfigDocument, box: SecretBox) -> int:
    """Decrypt every stored secret once, to fail early on a wrong key; return how many."""
    count = 0
    for tenant_id, plugin_id, settings in _subtrees(doc):
        for name, value in settings.items():
            if is_encrypted(value):
                assert isinstance(value, dict)
                box.decrypt(value, location(tenant_id, plugin_id, name))
                count += 1
    return count


def decrypt_settings(
    box: SecretBox, tenant_id: str, plugin_id: str, settings: Mapping[str, JsonValue]
) -> dict[str, JsonValue]:
    """Return a plugin's settings with every stored secret decrypted (for its workers only)."""
    return {
        name: box.decrypt(value, location(tenant_id, plugin_id, name))
        if is_encrypted(value) and isinstance(value, dict)
        else value
        for name, value in settings.items()
    }


def mask_settings(
    settings: Mapping[str, JsonValue], secret_fields: frozenset[str]
) -> dict[str, JsonValue]:
    """Return settings fit for an API answer: every secret (stored or plaintext) is `***`."""
    return {
        name: MASK
        if (name in secret_fields and value is not None) or is_encrypted(value)
        else value
        for name, value in settings.items()
    }


def merge_settings(
    current: Mapping[str, JsonValue],
    incoming: Mapping[str, JsonValue],
    secret_fields: frozenset[str],
) -> dict[str, JsonValue]:
    """Return `incoming` with each secret field sent back as `***` replaced by its stored value.

    `current` may be stored (encrypted) or decrypted settings; the kept value is copied as is.
    A field left out of `incoming` is removed (this is a replace, as PUT is). Raises
    SecretsMaskedError for `***` where nothing is stored, and ConfigInvalidError when `incoming`
    carries an encrypted value (clients send plaintext or `***`, never ciphertext).
    """
    merged = dict(incoming)
    for name, value in incoming.items():
        if is_encrypted(value):
            raise ConfigInvalidError("settings", [f"$.{name}: encrypted values cannot be sent"])
        if name in secret_fields and value == MASK:
            kept = current.get(name)
            if kept is None:
                raise SecretsMaskedError(name)
            merged[name] = kept
    return merged
