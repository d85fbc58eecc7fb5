"""The audit chain in PostgreSQL: `PgAuditSink` appends, `verify_database` checks.

Records have exactly the file log's shape and hash rule (`runner.audit`): one chain for every
host. Each append locks the `audit_head` row, computes the next link from it, inserts the record
and moves the head in one transaction, so appends from all hosts are serialized and the chain
never forks. The table refuses UPDATE and DELETE (a trigger); the chain shows any edit anyway.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from ..audit import canonical, seal_record
from ..audit_verify import AuditProblem, AuditReport, verify_lines
from .connect import CONNECTION_ERRORS, Connection, Pool, redact, unavailable

SOURCE: Final = "audit_records"
_FETCH_BATCH: Final = 10_000


class PgAuditSink:
    """Append records to the `audit_records` chain; `AuditLog(settings, sink)` uses it.

    Raises StoreUnavailableError when the database cannot be reached (nothing appended). An
    append that has started completes even if the caller is cancelled meanwhile.
    """

    def __init__(self, pool: Pool, url: str) -> None:
        self._pool = pool
        self._url = url

    async def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append `event` as the chain's next link, in one transaction; return the record."""
        return await asyncio.shield(self._append(event))

    async def _append(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
                record = seal_record(event, head["seq"] + 1, head["hash"])
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
