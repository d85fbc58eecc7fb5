"""The audit trail: append-only, hash-chained JSON lines, rotated by size, and their verification.

Each line records who (key id, tenant) did what (action, target) with which outcome, for which
request; never secrets, bodies or payloads: callers pass only those fields and a few scalar
`details`. What to record and when is the caller's decision (the admin API, the config store).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from .config_files import PRIVATE_FILE, ensure_private_dir, exclusive_lock, fsync_dir
from .config_files import write_atomically as _write_atomically
from .errors import RunnerError

GENESIS: Final = "0" * 64
FORMAT: Final = 1
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
DEFAULT_KEEP: Final = 5
MAX_DETAILS: Final = 16
MAX_TEXT: Final = 256
_TAIL_BYTES: Final = 64 * 1024
_ACTION: Final = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_DETAIL_KEY: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
RECORD_FIELDS: Final = frozenset(
    {"v", "seq", "time", "key_id", "tenant", "action", "target", "outcome", "request_id"}
    | {"details", "prev", "hash"}
)
Outcome = Literal["success", "failure", "denied", "error"]
OUTCOMES: Final = frozenset({"success", "failure", "denied", "error"})
Scalar = str | int | float | bool | None
_log = logging.getLogger(__name__)


class AuditError(RunnerError):
    """Root of the audit trail's errors."""


class AuditFieldError(AuditError):
    """A field given to `record` breaks the rules (unknown outcome, too long, not a scalar)."""


class AuditCorruptError(AuditError):
    """The log's last complete line cannot be read, so the chain cannot be continued.

    Run `corral audit verify` to see where, and move the damaged file aside.
    """


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Where the log lives, when it rotates, how many rotated files to keep, and durability."""

    path: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    keep: int = DEFAULT_KEEP
    fsync: bool = True  # False trades the last appends on power loss for speed

    def __post_init__(self) -> None:
        if self.keep < 1 or self.max_bytes < 4096:
            raise AuditError("the audit log keeps at least 1 rotated file of at least 4096 bytes")

    @classmethod
    def from_env(cls, state_dir: Path, environ: Mapping[str, str] = os.environ) -> AuditSettings:
        """Read the `CORRAL_AUDIT_*` settings; raise AuditError on a bad value.

        `CORRAL_AUDIT_LOG` (default `<state dir>/audit/audit.log`), `CORRAL_AUDIT_MAX_BYTES`,
        `CORRAL_AUDIT_KEEP` and `CORRAL_AUDIT_FSYNC`.
        """
        try:
            return cls(
                path=Path(environ.get("CORRAL_AUDIT_LOG") or state_dir / "audit" / "audit.log"),
                max_bytes=int(environ.get("CORRAL_AUDIT_MAX_BYTES") or DEFAULT_MAX_BYTES),
                keep=int(environ.get("CORRAL_AUDIT_KEEP") or DEFAULT_KEEP),
                fsync=environ.get("CORRAL_AUDIT_FSYNC", "true").strip().lower()
                not in {"false", "0", "no", "off"},
            )
        except ValueError as exc:
            raise AuditError(f"invalid audit setting: {exc}") from exc


def rotated_path(path: Path, generation: int) -> Path:
    """Return rotated file `generation` of the log (1 is the newest rotated file)."""
    return path.with_name(f"{path.name}.{generation}")


def anchor_path(path: Path) -> Path:
    """Return the file recording where the chain starts once the oldest file was dropped."""
    return path.with_name(f"{path.name}.anchor")


def canonical(record: Mapping[str, Any]) -> str:
    """Return the canonical JSON text of a record: sorted keys, no spaces, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def line_hash(record: Mapping[str, Any]) -> str:
    """Return the sha256 hex of the canonical record without its `hash` (`prev` included)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


@dataclass
class _Tail:
    prev: str = GENESIS
    seq: int = 0
    stamp: tuple[int, int] = (0, 0)  # (inode, size) of the current file when last read


def seal_record(event: Mapping[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """Return the record of `event` as chain link `seq` after `prev`: stamped and hashed."""
    time = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record = {**event, "v": FORMAT, "seq": seq, "time": time, "prev": prev}
    record["hash"] = line_hash(record)
    return record


class AuditSink(Protocol):
    """Where records go instead of the file: a database (`runner.pg.audit`), one chain for all."""

    async def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append `event` (checked by `record`) as the chain's next link; return the record."""
        ...


class AuditLog:
    """Append events to the chain. Build with `await AuditLog.open(settings)`.

    Appends from tasks are serialized by a lock, and across processes by a file lock; each is
    one `write` of a whole line, fsynced unless `settings.fsync` is false. With a `sink`, the
    records go there instead (the file is not touched): same checks, same record shape.
    """

    def __init__(self, settings: AuditSettings, sink: AuditSink | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self._lock = asyncio.Lock()
        self._tail = _Tail()

    @classmethod
    async def open(cls, settings: AuditSettings, *, sink: AuditSink | None = None) -> AuditLog:
        """Open (or start) the log; a torn last line left by a crash is moved aside, loudly.

        Raises AuditCorruptError when the last complete line is unreadable.
        """
        if sink is not None:
            return cls(settings, sink)
        log = cls(settings)
        torn = await asyncio.to_thread(log._open_sync)
        if torn is not None:
            await log.record("audit.torn_line", outcome="error", details=torn)
        return log

    async def record(
        self,
        action: str,
        *,
        outcome: Outcome = "success",
        key_id: str | None = None,
        tenant: str | None = None,
        target: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Scalar] | None = None,
    ) -> dict[str, Any]:
        """Append one event and return the record written.

        `details` holds at most 16 scalars under lower-case keys; the caller keeps them free of
        secrets and payloads (ids, counts, codes). Raises AuditFieldError on a bad field, and
        OSError when the line cannot be written. The append completes even if the caller is
        cancelled meanwhile.
        """
        event = _event(action, outcome, key_id, tenant, target, request_id, details or {})
        if self.sink is not None:
            return await self.sink.append(event)
        async with self._lock:
            return await asyncio.to_thread(self._append_sync, event)

    def _lock_path(self) -> Path:
        return self.settings.path.with_name(self.settings.path.name + ".lock")

    def _open_sync(self) -> dict[str, Scalar] | None:
        if ensure_private_dir(self.settings.path.parent):
            _log.warning(
                "the audit directory %s is world-accessible; make it 0700 (the files are 0600)",
                self.settings.path.parent,
            )
        with exclusive_lock(self._lock_path()):
            return self._sync_tail()

    def _append_sync(self, event: dict[str, Any]) -> dict[str, Any]:
        with exclusive_lock(self._lock_path()):
            if _stamp(self.settings.path) != self._tail.stamp:  # another process wrote
                torn = self._sync_tail()
                if torn is not None:  # ... and crashed mid-line: record that first
                    self._append_line(_torn_event(torn))
            return self._append_line(event)

    def _append_line(self, event: dict[str, Any]) -> dict[str, Any]:
        path = self.settings.path
        record = seal_record(event, self._tail.seq + 1, self._tail.prev)
        line = (canonical(record) + "\n").encode()
        size = self._tail.stamp[1]
        if size and size + len(line) > self.settings.max_bytes:
            self._rotate()
        is_new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            _write_all(fd, line)
            if self.settings.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if is_new and self.settings.fsync:
            fsync_dir(path.parent)  # the new file's entry must survive a power loss too
        self._tail = _Tail(record["hash"], record["seq"], _stamp(path))
        return record

    def _sync_tail(self) -> dict[str, Scalar] | None:
        """Read the chain's end from disk; cut a torn last line off, keeping it aside."""
        path = self.settings.path
        torn = _cut_torn_line(path)
        for candidate in [path, *(rotated_path(path, g) for g in range(1, self.settings.keep + 1))]:
            last = _last_line(candidate)
            if last is not None:
                try:
                    record = json.loads(last)
                    self._tail = _Tail(str(record["hash"]), int(record["seq"]), _stamp(path))
                except (ValueError, KeyError, TypeError) as exc:
                    raise AuditCorruptError(
                        f"the last line of {candidate} is unreadable ({exc}); run `corral audit "
                        "verify` and move the damaged file aside"
                    ) from exc
                return torn
        self._tail = _Tail(GENESIS, 0, _stamp(path))
        return torn

    def _rotate(self) -> None:
        path, keep = self.settings.path, self.settings.keep
        oldest = rotated_path(path, keep)
        if oldest.exists():
            # The chain will start inside the next-oldest file: record where, before dropping.
            survivor = rotated_path(path, keep - 1) if keep > 1 else path
            first = _first_line(survivor)
            if first is not None:
                record = json.loads(first)
                anchor = {"seq": record["seq"], "prev": record["prev"], "dropped": oldest.name}
                _write_atomically(anchor_path(path), (canonical(anchor) + "\n").encode())
        for generation in range(keep - 1, 0, -1):
            older = rotated_path(path, generation)
            if older.exists():
                os.replace(older, rotated_path(path, generation + 1))
        os.replace(path, rotated_path(path, 1))
        fsync_dir(path.parent)
        self._tail.stamp = (0, 0)


def _event(
    action: str,
    outcome: str,
    key_id: str | None,
    tenant: str | None,
    target: str | None,
    request_id: str | None,
    details: Mapping[str, Scalar],
) -> dict[str, Any]:
    if not _ACTION.match(action):
        raise AuditFieldError(f"action {action!r} must match {_ACTION.pattern}")
    if outcome not in OUTCOMES:
        raise AuditFieldError(f"outcome {outcome!r} is not one of {sorted(OUTCOMES)}")
    texts = {"key_id": key_id, "tenant": tenant, "target": target, "request_id": request_id}
    for name, text in texts.items():
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
            raise AuditFieldError(f"{name} must be a string of at most {MAX_TEXT} characters")
    if len(details) > MAX_DETAILS:
        raise AuditFieldError(f"details holds {len(details)} entries; at most {MAX_DETAILS}")
    for key, value in details.items():
        if not isinstance(key, str) or not _DETAIL_KEY.match(key):
            raise AuditFieldError(f"details key {key!r} must match {_DETAIL_KEY.pattern}")
        if not _is_clean_scalar(value):
            raise AuditFieldError(f"details[{key!r}] must be a short scalar")
    event = {"action": action, "outcome": outcome, **texts, "details": dict(details)}
    try:
        canonical(event).encode()
    except UnicodeEncodeError as exc:
        raise AuditFieldError("a field is not valid Unicode text") from exc
    return event


def _torn_event(torn: Mapping[str, Scalar]) -> dict[str, Any]:
    return _event("audit.torn_line", "error", None, None, None, None, torn)


def _is_clean_scalar(value: object) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_ino, st.st_size)


def _read_tail(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            return f.read()
    except FileNotFoundError:
        return b""


def _last_line(path: Path) -> str | None:
    lines = _read_tail(path).splitlines()
    return lines[-1].decode("utf-8", "replace") if lines else None


def _first_line(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            line = f.readline()
    except FileNotFoundError:
        return None
    return line.decode("utf-8", "replace") if line.endswith(b"\n") else None


def _cut_torn_line(path: Path) -> dict[str, Scalar] | None:
    tail = _read_tail(path)
    if not tail or tail.endswith(b"\n"):
        return None
    torn = tail[tail.rfind(b"\n") + 1 :]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.torn-{stamp}")
    _write_atomically(aside, torn)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - len(torn))
        os.fsync(f.fileno())
    _log.error(
        "the audit log %s ended in a torn line (%d bytes, a crash mid-append); it was moved to %s "
        "and the event is recorded",
        path,
        len(torn),
        aside,
    )
    return {"bytes": len(torn), "saved_as": aside.name}
