"""encryption_provider: encrypt and decrypt with keys held by a KMS or HSM."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class EncryptRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Plaintext to encrypt; `context` is bound as associated data."""

    plaintext: bytes
    key_id: str | None = None
    context: dict[str, str] = msgspec.field(default_factory=dict)


class DecryptRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Ciphertext to decrypt, with the same context it was encrypted under."""

    ciphertext: bytes
    key_id: str | None = None
    context: dict[str, str] = msgspec.field(default_factory=dict)


class Ciphertext(msgspec.Struct, frozen=True, kw_only=True):
    """Encrypted bytes and the key that made them."""

    ciphertext: bytes
    key_id: str


class Plaintext(msgspec.Struct, frozen=True, kw_only=True):
    """Decrypted bytes."""

    plaintext: bytes


SPEC: Final = CategorySpec(
    kind="encryption_provider",
    description="KMS- and HSM-backed cryptography.",
    dispatch=Dispatch.FIRST_SUCCESS,
    methods={
        "encrypt": MethodSpec(EncryptRequest, Ciphertext),
        "decrypt": MethodSpec(DecryptRequest, Plaintext),
    },
)
