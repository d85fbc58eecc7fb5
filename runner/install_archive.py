"""Safe materialization of a bundle (a `.zip`, a `.tar.gz` or a directory) into a fresh directory.

Only regular files and directories are written; a member with an absolute path, a `..`
component, a link, a device or a FIFO refuses the whole bundle. Size, file count and
compression ratio are counted from the bytes actually produced while writing, never from
headers. Everything here blocks: callers run it in a thread. Hashing and the store are elsewhere.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final, Literal, Protocol

from .digest import SKIPPED_DIRS
from .install_errors import InstallError, Reason

BundleKind = Literal["directory", "zip", "tar.gz"]

_CHUNK: Final = 64 * 1024
_DIR_MODE: Final = 0o700  # staging is private until the store seals it
_FILE_MODE: Final = 0o600
_ZIP_METHODS: Final = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Caps on what one bundle may unpack to; all are checked while writing."""

    max_archive_bytes: int = 32 * 1024 * 1024  # an archive file, local or downloaded
    max_total_bytes: int = 128 * 1024 * 1024  # the sum of every file written
    max_files: int = 4096  # files and directories
    max_ratio: float = 100.0  # bytes written per byte of compressed input
    ratio_grace_bytes: int = 1024 * 1024  # the ratio is checked once this much was written


class AbortedError(Exception):
    """The caller gave up (its task was cancelled); the partial output was removed."""


def bundle_kind(path: Path) -> BundleKind:
    """Return how to read the bundle at `path`; raise InstallError(invalid_bundle) otherwise."""
    if path.is_dir() and not path.is_symlink():
        return "directory"
    name = path.name.lower()
    if not path.is_file():
        raise InstallError(Reason.INVALID_BUNDLE, "no such bundle", source=str(path))
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    raise InstallError(
        Reason.INVALID_BUNDLE, "a bundle is a directory, a .zip or a .tar.gz", source=str(path)
    )


def member_path(name: str) -> PurePosixPath | None:
    """Return the safe relative path of an archive member, or None for the root itself.

    Raises InstallError(unsafe_archive) for absolute paths, `..`, drive letters, backslashes
    and NUL bytes.
    """
    if not name or "\0" in name or "\\" in name:
        raise InstallError(Reason.UNSAFE_ARCHIVE, "unsafe member name", member=name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InstallError(Reason.UNSAFE_ARCHIVE, "absolute member path", member=name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InstallError(Reason.UNSAFE_ARCHIVE, "member path leaves the bundle", member=name)
    return PurePosixPath(*parts) if parts else None


class _Writer:
    """Writes members under `root`, counting files and bytes against the limits."""

    def __init__(
        self, root: Path, limits: ArchiveLimits, compressed_bytes: int, abort: threading.Event
    ) -> None:
        self.root = root
        self.limits = limits
        self.compressed_bytes = compressed_bytes
        self.abort = abort
        self.files = 0
        self.total_bytes = 0

    def _count(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise InstallError(
                Reason.TOO_LARGE, f"more than {self.limits.max_files} entries", member=name
            )

    def directory(self, relative: PurePosixPath, name: str) -> None:
        self._count(name)
        target = self.root.joinpath(*relative.parts)
        try:
            target.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:  # a file is already there
            raise InstallError(Reason.UNSAFE_ARCHIVE, f"cannot create: {exc}", member=name) from exc

    def file(
        self, relative: PurePosixPath, name: str, data: IO[bytes], executable: bool, packed: int
    ) -> None:
        """Copy `data` to `relative`; `packed` is the member's compressed size, if known."""
        self._count(name)
        target = self.root.joinpath(*relative.parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            target.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(target, flags, _FILE_MODE | (0o100 if executable else 0))
        except FileExistsError as exc:
            raise InstallError(Reason.UNSAFE_ARCHIVE, "duplicate member", member=name) from exc
        except OSError as exc:
            raise InstallError(Reason.UNSAFE_ARCHIVE, f"cannot create: {exc}", member=name) from exc
        written = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := data.read(_CHUNK):
                if self.abort.is_set():
                    raise AbortedError
                written += len(chunk)
                self.total_bytes += len(chunk)
                self._check(name, written, packed)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())  # the store entry must be whole once it is renamed into place

    def _check(self, name: str, written: int, packed: int) -> None:
        limits = self.limits
        if self.total_bytes > limits.max_total_bytes:
            raise InstallError(
                Reason.TOO_LARGE,
                f"unpacks to more than {limits.max_total_bytes} bytes",
                member=name,
            )
        if self.total_bytes > limits.ratio_grace_bytes and self.compressed_bytes > 0:
            ratio = self.total_bytes / self.compressed_bytes
            if ratio > limits.max_ratio:
                raise InstallError(
                    Reason.TOO_LARGE,
                    f"compression ratio above {limits.max_ratio:g} (a zip bomb?)",
                    member=name,
                )
        if (
            written > limits.ratio_grace_bytes
            and packed > 0
            and written / packed > limits.max_ratio
        ):
            raise InstallError(
                Reason.TOO_LARGE,
                f"member compression ratio above {limits.max_ratio:g} (a zip bomb?)",
                member=name,
            )


def _is_skipped(relative: PurePosixPath, is_dir: bool) -> bool:
    # The tree digest skips compiled-cache directories, so nothing in them may reach the store.
    parents = relative.parts if is_dir else relative.parts[:-1]
    return any(part in SKIPPED_DIRS for part in parents)


def _extract_zip(archive: Path, writer: _Writer) -> None:
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            relative = member_path(info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if relative is None or _is_skipped(relative, info.is_dir() or kind == stat.S_IFDIR):
                continue
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InstallError(
                    Reason.UNSAFE_ARCHIVE,
                    "links and special files are not allowed",
                    member=info.filename,
                )
            if info.flag_bits & 0x1:
                raise InstallError(Reason.UNSAFE_ARCHIVE, "encrypted member", member=info.filename)
            if info.is_dir() or kind == stat.S_IFDIR:
                writer.directory(relative, info.filename)
                continue
            if info.compress_type not in _ZIP_METHODS:
                raise InstallError(
                    Reason.UNSAFE_ARCHIVE,
                    "only stored and deflated members are allowed",
                    member=info.filename,
                )
            with bundle.open(info) as data:
                writer.file(relative, info.filename, data, bool(mode & 0o111), info.compress_size)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _BoundedReader:
    """A read-only stream that fails once more than `limit` bytes were read through it.

    tarfile buffers some headers (pax, GNU long names) in memory as a whole; this caps them.
    """

    def __init__(self, raw: _Readable, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._count = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _CHUNK:
            size = _CHUNK
        data = self._raw.read(size)
        self._count += len(data)
        if self._count > self._limit:
            raise InstallError(
                Reason.TOO_LARGE, f"the tar stream exceeds {self._limit} bytes", member=None
            )
        return data


def _tar_members(stream: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (info := stream.next()) is not None:
        yield info


def _extract_tar_gz(archive: Path, writer: _Writer) -> None:
    # The decompressed tar stream holds headers and padding besides file data: allow some slack.
    limit = writer.limits.max_total_bytes + 1024 * (writer.limits.max_files + 2) + 1024 * 1024
    with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw) as unzipped:
        reader = _BoundedReader(unzipped, limit)
        with tarfile.open(fileobj=reader, mode="r|") as stream:  # type: ignore[call-overload]
            for info in _tar_members(stream):
                relative = member_path(info.name)
                if relative is None or _is_skipped(relative, info.isdir()):
                    continue
                if info.isdir():
                    writer.directory(relative, info.name)
                    continue
                if not info.isreg() or info.issparse():
                    raise InstallError(Reason.UNSAFE_ARCHIVE, _tar_kind(info), member=info.name)
                data = stream.extractfile(info)
                if data is None:  # pragma: no cover - isreg() members always have data
                    raise InstallError(Reason.UNSAFE_ARCHIVE, "unreadable member", member=info.name)
                writer.file(relative, info.name, data, bool(info.mode & 0o111), 0)


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symlinks are not allowed"
    if info.islnk():
        return "hardlinks are not allowed"
    if info.ischr() or info.isblk():
        return "device files are not allowed"
    if info.isfifo():
        return "FIFOs are not allowed"
    if info.issparse():
        return "sparse files are not allowed"
    return "only regular files and directories are allowed"


def _copy_directory(source: Path, writer: _Writer) -> None:
    """Copy a directory bundle, refusing links and special files (raised as unsafe_bundle)."""

    def unreadable(exc: OSError) -> None:
        raise InstallError(Reason.INVALID_BUNDLE, f"cannot read the bundle: {exc}") from exc

    for dirpath, dirnames, filenames in os.walk(source, onerror=unreadable, followlinks=False):
        base = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            relative = PurePosixPath((base / name).relative_to(source).as_posix())
            if (base / name).is_symlink():
                raise InstallError(
                    Reason.UNSAFE_BUNDLE, "symlinks are not allowed", member=str(relative)
                )
            if name in SKIPPED_DIRS:
                continue
            writer.directory(relative, str(relative))
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = base / name
            relative = PurePosixPath(path.relative_to(source).as_posix())
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                kind = "symlinks are" if stat.S_ISLNK(mode) else "special files are"
                raise InstallError(
                    Reason.UNSAFE_BUNDLE, f"{kind} not allowed", member=str(relative)
                )
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise InstallError(
                    Reason.UNSAFE_BUNDLE, f"cannot read: {exc}", member=str(relative)
                ) from exc
            with os.fdopen(fd, "rb") as data:
                writer.file(relative, str(relative), data, bool(mode & 0o111), 0)


def unpack(
    source: Path,
    kind: BundleKind,
    target: Path,
    limits: ArchiveLimits,
    abort: threading.Event | None = None,
) -> None:
    """Write the bundle at `source` into the new directory `target` (blocking).

    Raises InstallError (unsafe_archive, unsafe_bundle, too_large, invalid_bundle) or
    AbortedError once `abort` is set; on any failure `target` is removed.
    """
    compressed = source.stat().st_size if kind != "directory" else 0
    if compressed > limits.max_archive_bytes:
        raise InstallError(
            Reason.TOO_LARGE, f"the archive is larger than {limits.max_archive_bytes} bytes"
        )
    target.mkdir(mode=_DIR_MODE)
    writer = _Writer(target, limits, compressed, abort or threading.Event())
    try:
        if kind == "zip":
            _extract_zip(source, writer)
        elif kind == "tar.gz":
            _extract_tar_gz(source, writer)
        else:
            _copy_directory(source, writer)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        remove_tree(target)
        raise InstallError(Reason.INVALID_BUNDLE, f"corrupt {kind} archive: {exc}") from exc
    except BaseException:
        remove_tree(target)
        raise


def remove_tree(path: Path) -> None:
    """Remove `path` even if it was sealed read-only; a missing path is fine (idempotent)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    for dirpath, _dirnames, _filenames in os.walk(path):  # top-down: unseal before descending
        os.chmod(dirpath, 0o700)
    shutil.rmtree(path)
