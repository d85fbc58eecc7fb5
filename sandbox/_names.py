"""Validation of the names the host turns into paths (cgroups, scratch directories)."""

from __future__ import annotations

from typing import Final

_ALLOWED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
MAX_NAME_LENGTH: Final = 128


def is_plain_name(name: str) -> bool:
    """Return whether `name` is a safe single path component: letters, digits, `_.-`.

    It may not start with a dot or a dash and is at most 128 characters long.
    """
    return (
        0 < len(name) <= MAX_NAME_LENGTH
        and name[0] not in ".-"
        and all(char in _ALLOWED for char in name)
    )
