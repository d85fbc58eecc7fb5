"""`PgBackend`: one pool, and everything corral keeps in PostgreSQL, opened together.

`Service.start` opens it when `CORRAL_STORE` is set: the schema must be this code's (run
`corral store migrate` first); the config store, the audit sink, the replay cache and the shared
bundles all use the one pool. What reacts to other hosts' changes (LISTEN) is
`runner.pg.follower`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from ..audit import AuditLog
from ..config_secrets import SecretFieldResolver, no_secret_fields
from ..config_settings import ConfigSettings
from .audit import PgAuditSink
from .bundles import PgBundles
from .config_store import PgConfigStore
from .connect import CONNECTION_ERRORS, Pool, create_pool, redact, unavailable
from .migrations import SchemaStatus, require_current
from .replay import PgReplayCache

_CLOSE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class PgBackend:
    """The pool and the shared state it serves; `close` when done."""

    url: str
    pool: Pool
    schema: SchemaStatus
    audit_sink: PgAuditSink
    replay: PgReplayCache
    bundles: PgBundles

    @classmethod
    async def connect(cls, url: str) -> PgBackend:
        """Open the pool and check the schema version.

        Raises StoreUnavailableError when the database cannot be reached, SchemaOutdatedError
        when migrations are pending, SchemaTooNewError when a newer corral migrated it.
        """
        pool = await create_pool(url)
        try:
            async with pool.acquire() as conn:
                schema = await require_current(conn)
        except CONNECTION_ERRORS as exc:
            await pool.close()
            raise unavailable(url, exc) from exc
        except BaseException:
            await pool.close()
            raise
        return cls(
            url,
            pool,
            schema,
            PgAuditSink(pool, url),
            PgReplayCache(pool, url),
            PgBundles(pool, url),
        )

    async def open_config(
        self,
        settings: ConfigSettings,
        *,
        secret_fields: SecretFieldResolver = no_secret_fields,
        audit: AuditLog | None = None,
    ) -> PgConfigStore:
        """Open the config store on this backend's pool (see `PgConfigStore.open`)."""
        return await PgConfigStore.open(
            self.pool, self.url, settings, secret_fields=secret_fields, audit=audit
        )

    async def ping(self) -> None:
        """Run one trivial query; raise StoreUnavailableError when the database is unreachable.

        Unbounded beyond the pool's own timeouts: callers bound it (`asyncio.timeout`).
        """
        try:
            async with self.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except CONNECTION_ERRORS as exc:
            raise unavailable(self.url, exc) from exc

    @property
    def location(self) -> str:
        """Where the data lives, password removed: for readiness and logs."""
        return f"{redact(self.url)} (schema {self.schema.current})"

    async def close(self) -> None:
        """Close the pool, waiting a bounded time for connections in use (then terminating)."""
        await self.audit_sink.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.pool.close()
        except TimeoutError:
            self.pool.terminate()
