"""The content-addressed plugin store and the records of what is installed.

`PluginStore` owns `<root>/<tree digest>/`: entries are sealed read-only (dirs 0555, files 0444,
or 0555 when executable; world-readable so unprivileged workers can read them) and appear by one
`rename`, so a crash leaves at most a hidden `.staging-*` directory, never a half entry.
`PluginRecords` is the seam for where install records live; `JsonRecords` keeps them in a small
JSON index next to the entries until the config store takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

import msgspec

from .digest import is_sha256_hex, skipped_dirs, tree_digest
from .errors import RunnerError
from .install_archive import remove_tree

INDEX_NAME: Final = "index.json"
_STAGING_PREFIX: Final = ".staging-"
_TRASH_PREFIX: Final = ".trash-"
_ROOT_MODE: Final = 0o755
_SEALED_DIR: Final = 0o555
_SEALED_FILE: Final = 0o444
_SEALED_EXECUTABLE: Final = 0o555


class RecordsError(RunnerError):
    """The install records cannot be read (a corrupt index); nothing was changed."""


class InstalledPlugin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The record of one installed (plugin id, version)."""

    plugin_id: str
    version: str
    digest: str  # the tree digest of the store entry, which is also its directory name
    source: str  # the path or URL it was installed from
    source_sha256: str  # the value checksums.txt approved (archive sha256, or the tree digest)
    signed_by: str | None = None  # the trusted key that verified its signature, if any
    installed_at: str = ""  # ISO 8601, UTC


class PluginRecords(Protocol):
    """Where install records are kept (a JSON index now, the config store later)."""

    async def all(self) -> list[InstalledPlugin]:
        """Return every record, sorted by (plugin id, version)."""
        ...

    async def put(self, record: InstalledPlugin) -> None:
        """Add `record`, replacing any record of the same (plugin id, version)."""
        ...

    async def remove(self, plugin_id: str, version: str) -> None:
        """Drop the record of (plugin id, version); a missing one is fine."""
        ...


class SharedBundles(Protocol):
    """Where installed trees are shared with other hosts (`runner.pg.bundles.PgBundles`)."""

    async def publish(self, record: InstalledPlugin, entry: Path) -> bool:
        """Share the sealed tree at `entry` (stored once per digest) and `record`."""
        ...

    async def records(self) -> list[InstalledPlugin]:
        """Return every shared record, sorted by (plugin id, version)."""
        ...

    async def fetch(self, record: InstalledPlugin, store: PluginStore) -> Path:
        """Commit `record`'s tree to `store` only if it matches its digest; return its path."""
        ...

    async def forget(self, plugin_id: str, version: str) -> None:
        """Stop sharing (plugin id, version); its tree goes once no record names it."""
        ...


class _Index(msgspec.Struct, forbid_unknown_fields=True):
    format: int = 1
    plugins: list[InstalledPlugin] = msgspec.field(default_factory=list)


class JsonRecords:
    """Records in `<store>/index.json`, rewritten atomically under an advisory file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def all(self) -> list[InstalledPlugin]:
        return await asyncio.to_thread(self._read)

    async def put(self, record: InstalledPlugin) -> None:
        def update(plugins: list[InstalledPlugin]) -> list[InstalledPlugin]:
            key = (record.plugin_id, record.version)
            return [p for p in plugins if (p.plugin_id, p.version) != key] + [record]

        await asyncio.to_thread(self._update, update)

    async def remove(self, plugin_id: str, version: str) -> None:
        def update(plugins: list[InstalledPlugin]) -> list[InstalledPlugin]:
            return [p for p in plugins if (p.plugin_id, p.version) != (plugin_id, version)]

        await asyncio.to_thread(self._update, update)

    def _read(self) -> list[InstalledPlugin]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            plugins = msgspec.json.decode(data, type=_Index).plugins
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise RecordsError(f"{self.path} is corrupt: {exc}") from exc
        return sorted(plugins, key=lambda p: (p.plugin_id, p.version))

    def _update(self, change: Callable[[list[InstalledPlugin]], list[InstalledPlugin]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            plugins = change(self._read())
            plugins.sort(key=lambda p: (p.plugin_id, p.version))
            _write_atomically(
                self.path, msgspec.json.format(msgspec.json.encode(_Index(1, plugins)))
            )


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PluginStore:
    """The directory of sealed, content-addressed bundle copies. Methods block: use threads."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, digest: str) -> Path:
        """Return where the entry with tree digest `digest` lives (it may not exist)."""
        return self.root / digest

    def new_staging(self) -> Path:
        """Return the path of a fresh, not yet created staging directory inside the store."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, _ROOT_MODE)  # workers must traverse it, whatever the umask
        return self.root / f"{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"

    def commit(self, staging: Path, digest: str) -> Path:
        """Seal `staging` and move it to its content address; return the entry's path.

        An existing entry that still matches `digest` is kept (and `staging` removed); one
        that no longer matches (tampered) is replaced.
        """
        target = self.path_for(digest)
        if target.is_dir() and _matches(target, digest):
            remove_tree(staging)
            return target
        _seal(staging)
        if target.exists() or target.is_symlink():
            trash = self.root / f"{_TRASH_PREFIX}{secrets.token_hex(8)}"
            os.rename(target, trash)
            remove_tree(trash)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process committed the same content meanwhile: keep theirs.
            if not (target.is_dir() and _matches(target, digest)):
                raise
            remove_tree(staging)
        _fsync_dir(self.root)
        return target

    def remove_entry(self, digest: str) -> bool:
        """Remove the entry with tree digest `digest`; return whether there was one.

        The entry first leaves its address by one `rename` into a hidden `.trash-*` name, so a
        crash mid-removal leaves trash (removed by `remove_stale`), never a half entry.
        Raises ValueError when `digest` is not a digest (a corrupt record must not name a path).
        """
        if not is_sha256_hex(digest):
            raise ValueError("not a tree digest")
        target = self.path_for(digest)
        if not (target.exists() or target.is_symlink()):
            return False
        trash = self.root / f"{_TRASH_PREFIX}{secrets.token_hex(8)}"
        os.rename(target, trash)
        _fsync_dir(self.root)
        remove_tree(trash)
        return True

    def remove_stale(self) -> list[Path]:
        """Remove staging left by dead processes, and trash; return what was removed."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if path.name.startswith(_TRASH_PREFIX) or (
                path.name.startswith(_STAGING_PREFIX) and not _owner_alive(path.name)
            ):
                remove_tree(path)
                removed.append(path)
        return removed


def _owner_alive(name: str) -> bool:
    pid_text = name[len(_STAGING_PREFIX) :].split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _matches(entry: Path, digest: str) -> bool:
    try:
        return not skipped_dirs(entry) and tree_digest(entry) == digest
    except (OSError, ValueError):
        return False


def _seal(root: Path) -> None:
    """Make every file read-only (keeping the execute bit) and every directory 0555."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            executable = os.stat(path, follow_symlinks=False).st_mode & 0o111
            os.chmod(path, _SEALED_EXECUTABLE if executable else _SEALED_FILE)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), _SEALED_DIR)
    os.chmod(root, _SEALED_DIR)
