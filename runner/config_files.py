"""Durable small files: atomic replacement with numbered backups, and an exclusive file lock.

Every function blocks; async callers run them in a thread. What the bytes mean is the caller's
business (the config store, the key file, the audit anchor).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

PRIVATE_FILE: Final = 0o600
PRIVATE_DIR: Final = 0o700
_TEMP_SUFFIX: Final = ".tmp"


def temp_prefix(path: Path) -> str:
    """Return the name prefix of the temporary files written next to `path`."""
    return f".{path.name}."


def backup_path(path: Path, generation: int) -> Path:
    """Return the path of backup `generation` (1 is the newest) of `path`."""
    return path.with_name(f"{path.name}.bak.{generation}")


def glob_escape(name: str) -> str:
    """Return `name` with glob metacharacters escaped, to match it literally in a pattern."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_dir(path: Path) -> bool:
    """Create `path` (and missing parents) mode 0700 if missing.

    Return whether an existing directory is world-accessible. It is left as it is: it may be a
    shared directory (`/etc`, `/tmp`) whose mode is not ours to change; the files are 0600.
    """
    if not path.exists():
        path.mkdir(parents=True, mode=PRIVATE_DIR)
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
        return False
    return bool(path.stat().st_mode & 0o007)


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (created 0600) for the block.

    The lock serializes processes and threads alike (each call opens its own file description).
    It is released when the block ends or the process dies.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def write_atomically(
    path: Path, data: bytes, *, mode: int = PRIVATE_FILE, backups: int = 0
) -> None:
    """Replace `path` with `data` so that a reader sees the old bytes or the new, never neither.

    Steps: write a temp file in the same directory and fsync it; shift `.bak.1..N-1` up by one
    and hard-link the current file as `.bak.1` (when `backups` > 0); `os.replace`; fsync the
    directory. Raises OSError on failure, with the current file untouched and the temp removed.
    Callers must hold a lock: concurrent writers would race on the backups.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        if backups > 0 and path.exists():
            _rotate_backups(path, backups)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def create_exclusively(path: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> bool:
    """Create `path` holding `data` unless it exists; return whether this call created it.

    The file appears whole or not at all (a fsynced temp file hard-linked into place), and of
    two processes racing to create it exactly one wins; the other reads the winner's file.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    fsync_dir(path.parent)
    return True


def _rotate_backups(path: Path, keep: int) -> None:
    for generation in range(keep - 1, 0, -1):
        older = backup_path(path, generation)
        if older.exists():
            os.replace(older, backup_path(path, generation + 1))
    newest = backup_path(path, 1)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(newest)
    try:
        os.link(path, newest)  # the old inode lives on as the backup; no copy, no window
    except OSError:
        shutil.copy2(path, newest)  # a filesystem without hard links


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp files a killed writer left next to `path`; return them. Hold the lock."""
    prefix = temp_prefix(path)
    stale = [
        p
        for p in path.parent.iterdir()
        if p.name.startswith(prefix) and p.name.endswith(_TEMP_SUFFIX)
    ]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale
