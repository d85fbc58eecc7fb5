"""`PgReplayCache`: the webhook `ReplayCache` shared by every host, in `webhook_replay`.

A claim is one statement: insert the key, or take over its row only when the recorded delivery
has expired; a row comes back exactly when the claim succeeds, so two hosts claiming the same
nonce at once cannot both win. Expired rows are deleted in bounded batches, at most once per
`cleanup_every_s`, by the claim that finds the time has come (no background task).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from ..replay_cache import ReplayKey
from .connect import CONNECTION_ERRORS, Connection, Pool, unavailable

DEFAULT_CLEANUP_EVERY_S: Final = 60.0
DEFAULT_CLEANUP_BATCH: Final = 1000
_CLAIM: Final = """
INSERT INTO webhook_replay (tenant_id, plugin_id, route_id, nonce, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, plugin_id, route_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE webhook_replay.expires_at <= $6
RETURNING 1
"""
_CLEANUP: Final = """
DELETE FROM webhook_replay WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM webhook_replay WHERE expires_at <= $1 LIMIT $2))
"""
_log = logging.getLogger(__name__)


class PgReplayCache:
    """A `ReplayCache` in PostgreSQL. Raises StoreUnavailableError when it cannot be reached.

    A webhook whose nonce cannot be recorded must not be accepted: the caller answers with an
    error rather than risk a replay.
    """

    def __init__(
        self,
        pool: Pool,
        url: str,
        *,
        cleanup_every_s: float = DEFAULT_CLEANUP_EVERY_S,
        cleanup_batch: int = DEFAULT_CLEANUP_BATCH,
    ) -> None:
        self._pool = pool
        self._url = url
        self._cleanup_every_s = cleanup_every_s
        self._cleanup_batch = cleanup_batch
        self._next_cleanup = 0.0  # loop time
        self.removed = 0  # expired rows deleted by this instance

    async def claim(self, key: ReplayKey, *, expires_at: float, now: float) -> bool:
        """Record `key` until `expires_at`; return False if it is already recorded and live."""
        try:
            async with self._pool.acquire() as conn:
                won = await conn.fetchval(_CLAIM, *key, expires_at, now)
                if asyncio.get_running_loop().time() >= self._next_cleanup:
                    await self._cleanup(conn, now)
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc) from exc
        return won is not None

    async def _cleanup(self, conn: Connection, now: float) -> None:
        self._next_cleanup = asyncio.get_running_loop().time() + self._cleanup_every_s
        status = await conn.execute(_CLEANUP, now, self._cleanup_batch)
        removed = int(str(status).rsplit(" ", 1)[-1])
        self.removed += removed
        if removed:
            _log.debug("replay cache: removed %d expired nonces", removed)
