"""Verification of the audit trail: walk the log and its rotated files, check every link.

The format (canonical lines, `prev`/`hash`, rotation and the anchor) is `audit`'s; this module
only reads it, and reports each problem with its file and line instead of stopping at the first.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .audit import GENESIS, RECORD_FIELDS, anchor_path, canonical, line_hash, rotated_path
from .config_files import glob_escape

ProblemKind = Literal["torn", "malformed", "edited", "broken_link", "unanchored", "missing"]


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One finding of `verify`: which file and line (1-based; 0: the file itself), and what."""

    file: str
    line: int
    kind: ProblemKind
    message: str


@dataclass
class AuditReport:
    """The outcome of `verify`: files walked (oldest first), lines, the head, and problems."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    head_hash: str = GENESIS
    head_seq: int = 0
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def is_intact(self) -> bool:
        """Whether the chain verified without any problem."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {"intact": self.is_intact, **asdict(self)}


def verify(path: Path) -> AuditReport:
    """Walk the log and its rotated files, oldest first, checking every line and every link.

    Finds edited lines (hash or canonical form), removed, inserted or reordered lines (a broken
    `prev` link; `seq` tells which), a torn last line, a missing rotated file, and a chain whose
    start is neither the genesis nor the recorded anchor. Blocks; raises FileNotFoundError when
    there is no log at all and OSError when a file cannot be read.
    """
    rotated = path.parent.glob(f"{glob_escape(path.name)}.*")
    suffixes = (p.name[len(path.name) + 1 :] for p in rotated)
    generations = sorted((int(s) for s in suffixes if s.isdigit()), reverse=True)
    if not path.exists() and not generations:
        raise FileNotFoundError(f"no audit log at {path}")
    walk = _Walk(_read_anchor(path))
    for generation in range(max(generations, default=0), 0, -1):
        if generation not in generations:
            name = rotated_path(path, generation).name
            walk.problem(name, 0, "missing", f"{name} is missing from the rotated files")
    for file in [rotated_path(path, g) for g in generations] + [path]:
        if file.exists():
            walk.file(file)
    walk.check_start()
    return walk.report


def verify_lines(source: str, lines: Iterable[bytes]) -> AuditReport:
    """Check a chain given as its lines, oldest first (a database's records), like `verify`.

    `source` names where they came from in the report; line numbers count from 1.
    """
    walk = _Walk(None)
    walk.report.files.append(source)
    for number, raw in enumerate(lines, 1):
        walk.report.lines += 1
        walk.line(source, number, raw)
    walk.check_start()
    return walk.report


def _read_anchor(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        anchor = json.loads(anchor_path(path).read_text(encoding="utf-8"))
        if isinstance(anchor, dict):
            return anchor
    return None


class _Walk:
    """The state of a verification: the expected `prev` and `seq` of the next line."""

    def __init__(self, anchor: dict[str, Any] | None) -> None:
        self.report = AuditReport()
        self.anchor = anchor
        self.prev: str | None = None  # None: no link to check (the start, or after bad line)
        self.seq = 0
        self.start: tuple[str, dict[str, Any]] | None = None
        self.hashes: set[str] = set()

    def problem(self, file: str, number: int, kind: ProblemKind, message: str) -> None:
        self.report.problems.append(AuditProblem(file, number, kind, message))

    def file(self, path: Path) -> None:
        self.report.files.append(path.name)
        lines = path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines[:-1], 1):
            self.report.lines += 1
            self.line(path.name, number, raw)
        if lines[-1]:
            message = f"{path.name} line {len(lines)}: incomplete last line (a torn write)"
            self.problem(path.name, len(lines), "torn", message)

    def line(self, name: str, number: int, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
            record = json.loads(text)
            if not isinstance(record, dict) or set(record) != RECORD_FIELDS:
                raise ValueError("not an audit record")
            seq, prev, stored = int(record["seq"]), str(record["prev"]), str(record["hash"])
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            self.problem(name, number, "malformed", f"{name} line {number}: unreadable ({exc})")
            self.prev = None
            return
        where = f"{name} line {number} (seq {seq})"
        if line_hash(record) != stored or canonical(record) != text:
            self.problem(name, number, "edited", f"{where}: the hash does not match the content")
        if self.start is None:
            self.start = (where, record)
        elif self.prev is not None and (prev != self.prev or seq != self.seq + 1):
            self.problem(name, number, "broken_link", f"{where}: {self._diagnose(seq)}")
        self.hashes.add(stored)
        self.prev, self.seq = stored, seq
        self.report.head_hash, self.report.head_seq = stored, seq

    def _diagnose(self, seq: int) -> str:
        expected = self.seq + 1
        if seq > expected:
            return f"expected seq {expected}: lines before it were removed or moved"
        if seq < expected:
            return f"expected seq {expected}: lines reordered or inserted"
        return "does not link to the line before it: that line was replaced or inserted"

    def check_start(self) -> None:
        if self.start is None:
            return
        where, record = self.start
        if record["prev"] == GENESIS and record["seq"] == 1:
            return
        anchored = self.anchor is not None and self.anchor.get("prev") in {
            record["prev"],
            *self.hashes,  # a crash between writing the anchor and dropping the file
        }
        if not anchored:
            message = f"{where}: the chain starts mid-way and no anchor records that start"
            self.report.problems.insert(
                0, AuditProblem(self.report.files[0], 1, "unanchored", message)
            )
