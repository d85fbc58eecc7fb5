"""systemd's notify protocol: READY=1, STATUS=, RELOADING=1, STOPPING=1 and watchdog pings.

A state is one datagram to the unix socket named by `$NOTIFY_SOCKET` (a leading `@` names an
abstract socket). Without that variable every call does nothing, so the daemon runs the same
outside systemd. Sending never blocks: a full socket drops the message (systemd re-asks nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

_log = logging.getLogger(__name__)


class Notifier:
    """Send states to the service manager; a no-op when not started by one."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Use `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) when it is set."""
        value = environ.get("NOTIFY_SOCKET", "").strip()
        if not value.startswith(("/", "@")):
            return cls(None)  # unset, or a vsock address this host does not speak
        return cls("\0" + value[1:] if value.startswith("@") else value)

    @property
    def is_enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._socket is not None

    def notify(self, *states: str) -> None:
        """Send `states` (e.g. `READY=1`, `STATUS=serving`) as one message; never raises."""
        if self._socket is None or self._address is None:
            return
        message = "\n".join(states).encode()
        try:
            self._socket.sendto(message, self._address)
        except OSError as exc:  # the manager went away, or its queue is full
            _log.warning("cannot notify the service manager: %s", exc.strerror or exc)

    def reloading(self) -> None:
        """Say a reload started (`RELOADING=1` with the monotonic time systemd asks for)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def close(self) -> None:
        """Close the socket; later calls do nothing."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """Return how often to ping (half of `$WATCHDOG_USEC`), or None when no watchdog is asked.

    `$WATCHDOG_PID`, when set, must be this process (the variable may have leaked to a child).
    """
    usec = environ.get("WATCHDOG_USEC", "").strip()
    pid = environ.get("WATCHDOG_PID", "").strip()
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


@contextlib.asynccontextmanager
async def watchdog(notifier: Notifier, interval_s: float | None) -> AsyncIterator[None]:
    """Ping `WATCHDOG=1` every `interval_s` while the block runs (an owned task, cancelled after).

    The pings come from the event loop, so a loop that stops turning stops them and systemd
    restarts the service.
    """
    if interval_s is None or not notifier.is_enabled:
        yield
        return

    async def ping() -> None:
        while True:
            notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(ping(), name="sd-watchdog")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])  # a cancellation of our own still propagates
