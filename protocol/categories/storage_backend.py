"""storage_backend: a key-value store for the host (Vault, KMS-backed KV, on-premises stores)."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class StorageKey(msgspec.Struct, frozen=True, kw_only=True):
    """Name one value."""

    key: str


class StoragePut(msgspec.Struct, frozen=True, kw_only=True):
    """Store `value` under `key`, replacing what was there."""

    key: str
    value: bytes


class StorageValue(msgspec.Struct, frozen=True, kw_only=True):
    """The stored value, or None when the key is absent."""

    value: bytes | None


class StorageList(msgspec.Struct, frozen=True, kw_only=True):
    """List keys starting with `prefix`."""

    prefix: str = ""
    limit: int = 1000


class StorageKeys(msgspec.Struct, frozen=True, kw_only=True):
    """Keys found, in lexical order."""

    keys: list[str]


SPEC: Final = CategorySpec(
    kind="storage_backend",
    description="HashiCorp Vault, AWS KMS, on-premises key-value stores.",
    dispatch=Dispatch.FIRST_SUCCESS,
    methods={
        "get": MethodSpec(StorageKey, StorageValue),
        "put": MethodSpec(StoragePut, None),
        "delete": MethodSpec(StorageKey, None),
        "list": MethodSpec(StorageList, StorageKeys),
    },
)
