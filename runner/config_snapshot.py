"""A config document as read at one moment, with its ETags, and its encoding on disk.

The ETag of the document is a digest of its bytes; the ETag of a (tenant, plugin) subtree is a
digest of that plugin's stored settings and activation only, so a write elsewhere does not
invalidate it. Stored secrets are ciphertext, so an ETag never reveals a secret.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Final

from .config_errors import ConfigInvalidError
from .config_model import ConfigDocument, parse_document

_ETAG_HEX: Final = 32


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """The document (stored form: secrets encrypted), its ETag, and the bytes it came from."""

    document: ConfigDocument
    etag: str
    data: bytes = field(repr=False)

    def plugin_etag(self, tenant_id: str, plugin_id: str) -> str:
        """Return the ETag of the tenant's config of one plugin (settings and activation).

        A subtree that does not exist has an ETag too, so a create can be conditional.
        """
        tenant = self.document.tenants.get(tenant_id)
        activation = tenant.activation(plugin_id) if tenant else None
        subtree = {
            "activation": activation.model_dump(mode="json") if activation else None,
            "settings": tenant.settings.plugins.get(plugin_id) if tenant else None,
        }
        return _digest(json.dumps(subtree, sort_keys=True, separators=(",", ":")).encode())

    def copy(self) -> ConfigSnapshot:
        """Return a snapshot whose document can be changed without touching this one."""
        return ConfigSnapshot(self.document.model_copy(deep=True), self.etag, self.data)


def encode_document(doc: ConfigDocument) -> bytes:
    """Return the stored bytes of `doc`: indented JSON with sorted keys and a final newline."""
    raw = doc.model_dump(mode="json")
    text = json.dumps(raw, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode()


def decode_document(data: bytes, source: str) -> ConfigSnapshot:
    """Parse and validate stored bytes; raise ConfigInvalidError saying what is wrong."""
    problem = None
    try:
        raw = json.loads(data, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        problem = f"$: not UTF-8 at byte {exc.start}"
    except json.JSONDecodeError as exc:
        problem = f"$: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except ValueError as exc:
        problem = f"$: {exc}"
    if problem is not None:
        # Raised outside the handlers: a decode error carries the whole text as context.
        raise ConfigInvalidError(source, [problem])
    return ConfigSnapshot(parse_document(raw, source), _digest(data), data)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a config document")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_ETAG_HEX]
