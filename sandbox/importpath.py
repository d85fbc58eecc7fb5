"""Keeping the interpreter's own files importable after the child drops root.

The interpreter may live under a directory the worker uid cannot traverse (`/root` is 0700), so
each `sys.path` entry is opened while still root and replaced by `/proc/self/fd/N`: that magic
link skips permission checks on the ancestors, and Landlock still judges the real directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Final

from .errors import ImportPathError

FD_PREFIX: Final = "/proc/self/fd/"


def _pin(path: str) -> str | None:
    """Return a /proc/self/fd path for `path`, or None when it does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImportPathError(path, exc.strerror or str(exc)) from exc
    return f"{FD_PREFIX}{fd}"


def _rewrite(entries: list[str], spellings: list[tuple[str, str]]) -> None:
    """Point each entry at or below a pinned directory at its pinned spelling, in place.

    `spellings` pairs each directory (as given and as resolved) with its /proc/self/fd path,
    longest first. Plain string prefixes: resolving every package path would cost ~0.5 ms.
    """
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or entry.startswith(FD_PREFIX):
            continue
        for directory, replacement in spellings:
            if entry == directory or entry.startswith(directory + os.sep):
                entries[index] = replacement + entry[len(directory) :]
                break


def pin_import_path(sys_path: Iterable[str]) -> list[str]:
    """Set `sys.path` to `sys_path` with every entry opened now and reached through its fd.

    Also re-points the `__path__` of packages imported so far (such as `encodings`, whose codecs
    load lazily) and clears the importer cache. Entries that do not exist are dropped. Returns
    the new `sys.path`. Raises ImportPathError when an existing entry cannot be opened.
    """
    pinned: dict[str, str] = {}
    spellings: dict[str, str] = {}
    new_path: list[str] = []
    for entry in sys_path:
        real = os.path.realpath(entry)
        replacement = pinned.get(real) or _pin(real)
        if replacement is None:
            continue
        pinned[real] = replacement
        spellings.setdefault(real, replacement)
        spellings.setdefault(os.path.normpath(entry), replacement)
        new_path.append(replacement)
    sys.path[:] = new_path
    longest_first = sorted(spellings.items(), key=lambda item: len(item[0]), reverse=True)
    for module in list(sys.modules.values()):
        package_path = getattr(module, "__path__", None)
        if isinstance(package_path, list):
            _rewrite(package_path, longest_first)
    sys.path_importer_cache.clear()
    return new_path
