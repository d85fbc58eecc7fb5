"""The tree digest: one sha256 that changes when any file of a bundle directory changes.

Definition (also in docs/plugins.md): walk the directory; refuse symlinks and anything that is
neither a regular file nor a directory; skip `__pycache__` directories (compiled caches are not
part of a bundle). For each regular file, in order of its relative POSIX path (compared as UTF-8
bytes), emit the line `<sha256 hex of content> <x|-> <relative path>\\n`, where `x` marks a
file with any execute bit. The digest is the sha256 hex of all lines concatenated. Adding,
removing, renaming or changing any file, or its execute bit, changes it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Final

SKIPPED_DIRS: Final = frozenset({"__pycache__"})
_CHUNK: Final = 1024 * 1024


class UnsafeTreeError(ValueError):
    """The tree holds a symlink, device, socket or FIFO; `member` names it."""

    def __init__(self, member: str, kind: str) -> None:
        super().__init__(f"{member}: {kind} not allowed in a bundle")
        self.member = member


def file_digest(path: Path) -> str:
    """Return the sha256 hex of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> list[tuple[str, Path, bool]]:
    """Return (relative path, absolute path, executable) for every file, sorted as specified.

    Raises UnsafeTreeError for a symlink or special file anywhere in the tree.
    """
    found: list[tuple[str, Path, bool]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            member = base / name
            if member.is_symlink():
                raise UnsafeTreeError(member.relative_to(root).as_posix(), "symlink")
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for name in filenames:
            member = base / name
            mode = member.lstat().st_mode
            relative = member.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise UnsafeTreeError(relative, "symlink")
            if not stat.S_ISREG(mode):
                raise UnsafeTreeError(relative, "special file")
            found.append((relative, member, bool(mode & 0o111)))
    found.sort(key=lambda item: item[0].encode())
    return found


def tree_digest(root: Path) -> str:
    """Return the tree digest of the directory `root` (blocking: run it in a thread)."""
    h = hashlib.sha256()
    for relative, path, executable in tree_files(root):
        h.update(f"{file_digest(path)} {'x' if executable else '-'} {relative}\n".encode())
    return h.hexdigest()


def skipped_dirs(root: Path) -> list[str]:
    """Return the relative paths of directories the tree digest skips (`__pycache__`).

    A store entry never holds one (install leaves them out), so finding one there means
    someone planted code the digest cannot see.
    """
    found: list[str] = []
    for dirpath, dirnames, _filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        found.extend((base / d).relative_to(root).as_posix() for d in dirnames if d in SKIPPED_DIRS)
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
    return sorted(found)


def is_sha256_hex(text: str) -> bool:
    """Return whether `text` is 64 lower-case hex digits (how digests are written everywhere)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def digests_equal(expected: str, actual: str) -> bool:
    """Compare two hex digests in constant time (`hmac.compare_digest`)."""
    return hmac.compare_digest(expected.encode("ascii"), actual.encode("ascii"))
