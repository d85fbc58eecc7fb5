"""Detached ed25519 bundle signatures: where they live, what they sign, and how they are checked.

A bundle at `<path>` (or `<url>`) is signed by the file `<path>.sig` (or `<url>.sig`): the
base64 of a 64-byte ed25519 signature over `signature_message(tree_digest)`. Signing the tree
digest rather than the archive file lets one signature cover a bundle however it is packaged.
Which keys are trusted, and when a signature is required, the allowlist says.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .allowlist import TrustedKey
from .install_errors import InstallError, Reason

SIGNATURE_SUFFIX: Final = ".sig"
SIGNATURE_CONTEXT: Final = b"corral-bundle-v1:"
MAX_SIGNATURE_FILE_BYTES: Final = 1024
_SIGNATURE_BYTES: Final = 64


def signature_message(tree_digest: str) -> bytes:
    """Return the bytes a publisher signs for a bundle with this tree digest."""
    return SIGNATURE_CONTEXT + tree_digest.encode("ascii")


def signature_path(bundle: Path) -> Path:
    """Return where the detached signature of the bundle at `bundle` lives."""
    return bundle.with_name(bundle.name + SIGNATURE_SUFFIX)


def read_signature_file(path: Path) -> bytes | None:
    """Return the text of a signature file, or None if there is none (blocking, bounded)."""
    try:
        with path.open("rb") as f:
            return f.read(MAX_SIGNATURE_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(Reason.SIGNATURE_INVALID, f"cannot read {path}: {exc}") from exc


def verify_signature(tree_digest: str, text: bytes, keys: Iterable[TrustedKey]) -> str:
    """Return the name of the trusted key whose signature `text` is over `tree_digest`.

    Raises InstallError(signature_invalid) when the file is malformed or no key verifies it.
    """
    if len(text) > MAX_SIGNATURE_FILE_BYTES:
        raise InstallError(Reason.SIGNATURE_INVALID, "the signature file is too large")
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise InstallError(Reason.SIGNATURE_INVALID, "the signature is not base64") from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise InstallError(
            Reason.SIGNATURE_INVALID, f"an ed25519 signature is {_SIGNATURE_BYTES} bytes"
        )
    message = signature_message(tree_digest)
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(signature, message)
        except InvalidSignature:
            continue
        return key.name
    raise InstallError(Reason.SIGNATURE_INVALID, "no trusted key verifies the signature")
