"""The audit chain in PostgreSQL: `PgAuditSink` appends, `verify_database` checks.

Records have exactly the file log's shape and hash rule (`runner.audit`): one chain for every
host. Each append locks the `audit_head` row, computes the next link from it, inserts the record
and moves the head in one transaction, so appends from all hosts are serialized and the chain
never forks. The table refuses UPDATE and DELETE (a trigger); the chain shows any edit anyway.
While the database cannot be reached, records wait in a bounded in-memory backlog, in order, with
the time they happened, and are appended first once it is back (docs/scale-out.md says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

from ..audit import FORMAT, canonical, line_hash
from ..audit_verify import AuditProblem, AuditReport, verify_lines
from .connect import CONNECTION_ERRORS, Connection, Pool, redact, unavailable
from .errors import StoreUnavailableError

SOURCE: Final = "audit_records"
DEFAULT_MAX_BACKLOG: Final = 10_000
_RETRY_EVERY_S: Final = 1.0  # an append finding a backlog tries to flush it at most this often
_FETCH_BATCH: Final = 10_000
_log = logging.getLogger(__name__)


class PgAuditSink:
    """Append records to the `audit_records` chain; `AuditLog(settings, sink)` uses it.

    When the database cannot be reached, a record joins the backlog (at most `max_backlog`,
    kept in order with the time it happened) and `append` returns it unsealed; the backlog is
    appended before any newer record, by `flush` (called on reconnection), by the next append,
    or by the sink's own retry task, at most once a second each, so a backlog never waits for a
    next act to be written. `close` stops that task. With the backlog full, `append` raises
    StoreUnavailableError and the record is lost (counted in `dropped`, logged). An append that
    has started completes even if the caller is cancelled meanwhile.
    """

    def __init__(self, pool: Pool, url: str, *, max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        self._pool = pool
        self._url = url
        self.max_backlog = max_backlog
        self.dropped = 0  # records lost because the backlog was full
        self._backlog: deque[dict[str, Any]] = deque()
        self._lock = asyncio.Lock()  # this host's appends and flushes, in order
        self._next_retry = 0.0  # loop time
        self._retrier: asyncio.Task[None] | None = None  # flushes the backlog until it is empty

    @property
    def backlog(self) -> int:
        """How many records wait for the database."""
        return len(self._backlog)

    async def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append `event` as the chain's next link, in one transaction; return the record.

        Raises StoreUnavailableError only when the database is unreachable and the backlog full.
        """
        stamped = {**event, "time": _now()}
        return await asyncio.shield(self._append(stamped))

    async def flush(self) -> int:
        """Append the backlog in order; return how many went. Stops (keeping the rest) when
        the database is still unreachable."""
        async with self._lock:
            return await self._flush()

    async def close(self) -> None:
        """Stop retrying the backlog (what still waits is lost with the process). Idempotent."""
        retrier, self._retrier = self._retrier, None
        if retrier is not None:
            retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retrier

    async def _retry_backlog(self) -> None:
        loop = asyncio.get_running_loop()
        while self._backlog:
            await asyncio.sleep(max(self._next_retry - loop.time(), _RETRY_EVERY_S / 10))
            async with self._lock:
                if self._backlog and loop.time() >= self._next_retry:
                    self._next_retry = loop.time() + _RETRY_EVERY_S
                    await self._flush()

    async def _append(self, stamped: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._backlog and loop.time() >= self._next_retry:
                self._next_retry = loop.time() + _RETRY_EVERY_S
                await self._flush()
            if not self._backlog:
                try:
                    return await self._insert(stamped)
                except StoreUnavailableError:
                    pass
            return self._buffer(stamped)

    async def _flush(self) -> int:
        sent = 0
        while self._backlog:
            try:
                await self._insert(self._backlog[0])
            except StoreUnavailableError:
                break
            self._backlog.popleft()
            sent += 1
        if sent and not self._backlog:
            _log.warning("audit: %d buffered record(s) appended to the chain", sent)
        return sent

    def _buffer(self, stamped: dict[str, Any]) -> dict[str, Any]:
        if len(self._backlog) >= self.max_backlog:
            self.dropped += 1
            _log.error(
                "audit: the database is unreachable and %d records wait: %s was not kept",
                len(self._backlog),
                stamped.get("action"),
            )
            raise StoreUnavailableError(
                f"PostgreSQL at {redact(self._url)} is unavailable and the audit backlog is full"
            )
        if not self._backlog:
            _log.error("audit: the database is unreachable; records wait in memory")
        self._backlog.append(stamped)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(
                self._retry_backlog(), name="audit-backlog"
            )
        return stamped

    async def _insert(self, stamped: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
                record = _seal(stamped, head["seq"] + 1, head["hash"])
                await conn.execute(
                    "INSERT INTO audit_records (seq, hash, record) VALUES ($1, $2, $3)",
                    record["seq"],
                    record["hash"],
                    canonical(record),
                )
                await conn.execute(
                    "UPDATE audit_head SET seq = $1, hash = $2", record["seq"], record["hash"]
                )
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc) from exc
        return record


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seal(stamped: dict[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """`runner.audit.seal_record`, keeping the time the event happened (it may have waited)."""
    record = {**stamped, "v": FORMAT, "seq": seq, "prev": prev}
    record["hash"] = line_hash(record)
    return record


async def verify_database(conn: Connection) -> AuditReport:
    """Walk the whole chain in `conn`'s database, oldest first, and check every link.

    The head row must name the last record (a removed tail shows as `missing`). Reads in
    batches of 10,000 records inside one repeatable-read snapshot.
    """
    lines: list[bytes] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
        after = 0
        while True:
            rows = await conn.fetch(
                "SELECT seq, record FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2",
                after,
                _FETCH_BATCH,
            )
            if not rows:
                break
            lines.extend(r["record"].encode() for r in rows)
            after = rows[-1]["seq"]
    report = verify_lines(SOURCE, lines)
    if head is not None and (head["seq"], head["hash"]) != (report.head_seq, report.head_hash):
        message = (
            f"the chain head says seq {head['seq']}, the last record is seq "
            f"{report.head_seq}: records at the end were removed"
        )
        report.problems.append(AuditProblem(SOURCE, 0, "missing", message))
    return report


def describe(url: str) -> str:
    """Return where the chain lives, for reports (password removed)."""
    return f"{redact(url)} ({SOURCE})"
