"""`PgListener`: one dedicated connection that LISTENs for other hosts' changes, kept up.

It owns one task (`start`, `close`). A notification only marks its channel as changed; the
owner's `on_change(channels)` then runs in that task, one call at a time, so a burst of
notifications is caught up on once. Notifications sent while the connection is down are lost,
so after every (re)connection every channel counts as changed. A lost connection shows at once
(asyncpg's termination callback) or at the next keepalive query; reconnection backs off with
full jitter. What catching up means is the owner's business (`runner.pg.follower`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from .connect import CONNECTION_ERRORS, Connection, connect, redact
from .errors import StoreUnavailableError

DEFAULT_KEEPALIVE_S: Final = 2.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
BACKOFF_BASE_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
_CLOSE_TIMEOUT_S: Final = 2.0
_log = logging.getLogger(__name__)

ChangeHandler = Callable[[frozenset[str]], Awaitable[None]]


class PgListener:
    """LISTEN on `channels` over a connection of its own; call `on_change` to catch up.

    `connected` says whether the connection is up now. `on_change` raising (the database
    went away again mid-way, or a bug) is logged, and the same channels are caught up on again
    after `retry_s`.
    """

    def __init__(
        self,
        url: str,
        channels: Iterable[str],
        on_change: ChangeHandler,
        *,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        retry_s: float = 1.0,
    ) -> None:
        self.channels = frozenset(channels)
        self.connected = False
        self.connections = 0  # how many times a connection was made (1 + reconnections)
        self._url = url
        self._on_change = on_change
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._retry_s = retry_s
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task that connects, listens and catches up (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="corral-pg-listener")

    async def close(self) -> None:
        """Cancel the task and wait for it (its connection is closed on the way out)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                conn = await connect(self._url, timeout_s=self._connect_timeout_s)
            except StoreUnavailableError as exc:
                failures += 1
                if failures == 1:
                    _log.error("cannot listen for changes: %s; retrying", exc)
                await asyncio.sleep(_backoff(failures))
                continue
            if failures:
                _log.warning("listening for changes on %s again", redact(self._url))
            failures = 0
            try:
                await self._serve(conn)
            except (*CONNECTION_ERRORS, StoreUnavailableError) as exc:
                _log.error("lost the listening connection (%s)", type(exc).__name__)
            finally:
                self.connected = False
                await _close(conn)
            failures = 1
            await asyncio.sleep(_backoff(failures))

    async def _serve(self, conn: Connection) -> None:
        lost = asyncio.Event()

        def on_lost(_: Any) -> None:
            lost.set()
            self._wake.set()

        conn.add_termination_listener(on_lost)
        for channel in sorted(self.channels):
            await conn.add_listener(channel, self._notified)
        self.connected = True
        self.connections += 1
        self._pending.update(self.channels)  # what was sent while no one listened is lost
        self._wake.set()
        while not lost.is_set():
            try:
                async with asyncio.timeout(self._keepalive_s):
                    await self._wake.wait()
            except TimeoutError:
                async with asyncio.timeout(self._keepalive_s):
                    await conn.fetchval("SELECT 1")  # a half-open connection shows here
                continue
            self._wake.clear()
            if lost.is_set():
                break
            await self._catch_up()
        raise StoreUnavailableError(f"the listening connection to {redact(self._url)} closed")

    async def _catch_up(self) -> None:
        pending, self._pending = frozenset(self._pending), set()
        if not pending:
            return
        try:
            await self._on_change(pending)
        except Exception:
            _log.exception("catching up on %s failed; retrying", ", ".join(sorted(pending)))
            self._pending.update(pending)
            await asyncio.sleep(self._retry_s)
            self._wake.set()

    def _notified(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        self._pending.add(channel)
        self._wake.set()


def _backoff(failures: int) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**failures)]."""
    return random.uniform(0.0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(failures, 16)))


async def _close(conn: Connection) -> None:
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await conn.close()
    except (TimeoutError, *CONNECTION_ERRORS):
        conn.terminate()
    except BaseException:
        conn.terminate()
        raise


__all__ = ["PgListener"]
