"""`checksums.txt`: the operator's list of approved bundle digests, in sha256sum format.

Each line is `<64 hex>  <name>`: for an archive the sha256 of the archive file, for a directory
its tree digest (`runner.digest`). A name is a path relative to the checksums file (or an
absolute path, or an https URL for remote installs). Parsing is strict; comparing digests and
deciding what to do about a mismatch is the installer's job.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .digest import file_digest, tree_digest
from .errors import RunnerError

_LINE: Final = re.compile(r"^([0-9A-Fa-f]{64}) [ *](.+)$")
_URL_PREFIXES: Final = ("https://", "http://")


class ChecksumsError(RunnerError):
    """checksums.txt is malformed; `line` is the 1-based line number at fault."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class ChecksumEntry:
    """One line of checksums.txt: the digest (lower-case hex) approved for `name`."""

    name: str
    sha256: str
    line: int


@dataclass(frozen=True, slots=True)
class Checksums:
    """A parsed checksums.txt; names resolve against `base_dir` (the file's directory)."""

    base_dir: Path
    entries: tuple[ChecksumEntry, ...] = ()

    def lookup(self, source: Path | str) -> ChecksumEntry | None:
        """Return the entry for a bundle path or URL, or None if it is not listed.

        Paths are compared after resolving both sides, so `./plugins/x` and `plugins/x`
        name the same bundle; URLs are compared as exact strings.
        """
        if isinstance(source, str) and source.startswith(_URL_PREFIXES):
            return next((e for e in self.entries if e.name == source), None)
        wanted = Path(source).resolve()
        for entry in self.entries:
            if entry.name.startswith(_URL_PREFIXES):
                continue
            if (self.base_dir / entry.name).resolve() == wanted:
                return entry
        return None


def parse_checksums(text: str, *, base_dir: Path, source: str = "checksums.txt") -> Checksums:
    """Parse checksums.txt text; raise ChecksumsError naming the first bad line.

    Blank lines and lines starting with `#` are ignored; a name may appear once.
    """
    entries: list[ChecksumEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("\\"):
            raise ChecksumsError(source, number, "escaped names (a leading \\) are not supported")
        match = _LINE.match(line)
        if match is None:
            raise ChecksumsError(source, number, "expected '<64 hex digits>  <name>'")
        digest, name = match.group(1).lower(), match.group(2)
        if name != name.strip():
            raise ChecksumsError(source, number, "the name has leading or trailing whitespace")
        key = name if name.startswith(_URL_PREFIXES) else os.path.normpath(name)
        if key in seen:
            raise ChecksumsError(source, number, f"{name!r} is already listed on line {seen[key]}")
        seen[key] = number
        entries.append(ChecksumEntry(name, digest, number))
    return Checksums(base_dir.resolve(), tuple(entries))


def load_checksums(path: Path) -> Checksums:
    """Read and parse the checksums file at `path` (blocking; it is small)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ChecksumsError(str(path), 0, f"cannot read: {exc}") from exc
    return parse_checksums(text, base_dir=path.parent, source=str(path))


def bundle_checksum(path: Path) -> str:
    """Return the value checksums.txt holds for the bundle at `path` (blocking).

    The tree digest for a directory, the sha256 of the file for an archive. Raises
    `runner.digest.UnsafeTreeError` for a directory holding a link or special file.
    """
    if path.is_dir():
        return tree_digest(path)
    return file_digest(path)


def checksum_name(path: Path, base_dir: Path) -> str:
    """Return the name under which `path` is listed in a checksums file kept in `base_dir`.

    Relative (POSIX separators) when the bundle lies under `base_dir`, absolute otherwise.
    """
    resolved = path.resolve()
    try:
        return resolved.relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def checksum_line(digest: str, name: str) -> str:
    """Return one line of checksums.txt, in the format sha256sum prints."""
    return f"{digest}  {name}"
