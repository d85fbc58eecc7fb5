"""Applying the schema's migrations, and reading which are applied.

`migrate` takes a transaction-scoped advisory lock before it looks at anything, so hosts running
it at once apply each migration exactly once (the others wait, then find nothing to do); the
whole run is one transaction, so a failure leaves the schema as it was. A schema newer than
this code is refused, never touched. Serving hosts check the version with `require_current`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from .connect import Connection
from .errors import SchemaOutdatedError, SchemaTooNewError
from .schema import LATEST, MIGRATIONS

# pg_advisory_xact_lock key of schema changes: "corral" in ASCII, then 1.
MIGRATION_LOCK: Final = 0x636F7272616C0001
_BOOKKEEPING: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A migration recorded in `schema_migrations`."""

    version: int
    name: str
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where the schema stands: its version, the code's, and what is applied."""

    current: int
    latest: int
    applied: list[AppliedMigration]

    @property
    def pending(self) -> list[int]:
        """The versions `migrate` would apply."""
        return [m.version for m in MIGRATIONS if m.version > self.current]

    @property
    def is_current(self) -> bool:
        """Whether the schema is exactly the one this code expects."""
        return self.current == self.latest

    def to_json(self) -> dict[str, object]:
        """Return the status as `corral store status --json` prints it."""
        return {
            "current": self.current,
            "latest": self.latest,
            "pending": self.pending,
            "applied": [
                {"version": m.version, "name": m.name, "applied_at": m.applied_at.isoformat()}
                for m in self.applied
            ],
        }


async def migrate(conn: Connection) -> list[int]:
    """Apply every pending migration in one transaction; return the versions applied.

    Safe to run from several hosts at once and while others serve (migrations only add).
    Raises SchemaTooNewError when the database is ahead of this code; asyncpg errors otherwise.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_BOOKKEEPING)
        current = await _current(conn)
        _refuse_newer(current)
        applied = []
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
        return applied


async def status(conn: Connection) -> SchemaStatus:
    """Return the schema's status (version 0 when nothing was ever migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = []
    if exists:
        rows = await conn.fetch(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        )
    applied = [AppliedMigration(r["version"], r["name"], r["applied_at"]) for r in rows]
    current = max((m.version for m in applied), default=0)
    return SchemaStatus(current, LATEST, applied)


async def require_current(conn: Connection) -> SchemaStatus:
    """Return the status if the schema is this code's; raise SchemaOutdatedError or TooNew."""
    found = await status(conn)
    _refuse_newer(found.current)
    if found.current < LATEST:
        raise SchemaOutdatedError(
            f"the database schema is at version {found.current}, this corral needs {LATEST}: "
            "run `corral store migrate`",
            current=found.current,
            latest=LATEST,
        )
    return found


async def _current(conn: Connection) -> int:
    value = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(value)


def _refuse_newer(current: int) -> None:
    if current > LATEST:
        raise SchemaTooNewError(
            f"the database schema is at version {current}, newer than this corral's {LATEST}: "
            "upgrade corral (it does not touch a newer schema)",
            current=current,
            latest=LATEST,
        )
