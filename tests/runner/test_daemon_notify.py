"""systemd notify protocol against a socket the test owns: READY, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from runner.sd_notify import Notifier, watchdog, watchdog_interval_s
from tests.runner.daemon_harness import running_daemon, stop

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, Path]]:
    """A bound, non-blocking unix datagram socket in a short temp dir (paths are capped at 108)."""
    directory = Path(tempfile.mkdtemp(prefix="corral-notify-", dir="/tmp"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


class Inbox:
    """Every state received, in order, one per line of each datagram."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.states: list[str] = []

    async def until(self, state: str, count: int = 1, timeout_s: float = 60) -> None:
        """Receive until `state` has arrived `count` times in all (bounded)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while self.states.count(state) < count:
                data = await loop.sock_recv(self.sock, 4096)
                self.states.extend(data.decode().split("\n"))


async def readyz(base: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as answer:
        return answer.status


async def test_ready_comes_once_serving_then_watchdog_pings_then_stopping(
    notify_socket: tuple[socket.socket, Path],
) -> None:
    sock, path = notify_socket
    inbox = Inbox(sock)
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    async with running_daemon(env=env) as daemon:
        await inbox.until("READY=1")
        assert await readyz(daemon.base) == 200  # READY=1 means the socket answers
        assert "WATCHDOG=1" not in inbox.states[: inbox.states.index("READY=1")]
        await inbox.until("WATCHDOG=1", count=3)
        assert await stop(daemon, signal.SIGTERM) == 0
        await inbox.until("STOPPING=1")
    ready = inbox.states.index("READY=1")
    assert inbox.states.index("STOPPING=1") > ready
    assert any(s.startswith("STATUS=serving on http://127.0.0.1:") for s in inbox.states)
    assert any(s.startswith("STATUS=starting") for s in inbox.states[:ready])


async def test_sighup_reloads_between_reloading_and_ready_and_keeps_serving(
    notify_socket: tuple[socket.socket, Path],
) -> None:
    sock, path = notify_socket
    inbox = Inbox(sock)
    async with running_daemon(env={"NOTIFY_SOCKET": str(path)}) as daemon:
        await inbox.until("READY=1")
        (daemon.state / "allowlist.toml").write_text("this is [not toml\n")
        daemon.process.send_signal(signal.SIGHUP)
        await inbox.until("RELOADING=1")
        await inbox.until("READY=1", count=2)
        assert await readyz(daemon.base) == 200  # an invalid file kept the old state
        reloading = inbox.states.index("RELOADING=1")
        assert inbox.states[reloading + 1].startswith("MONOTONIC_USEC=")
        assert await stop(daemon) == 0
    log = "".join(daemon.stderr)
    assert "reload finished" in log and "with problems" in log


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000"}) == 1.5
    mine = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(mine) == 1.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


async def test_an_abstract_socket_name_is_supported_and_the_watchdog_task_is_owned() -> None:
    name = f"corral-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        inbox = Inbox(sock)
        try:
            notifier.notify("READY=1", "STATUS=hello")
            await inbox.until("READY=1", timeout_s=5)
            assert inbox.states == ["READY=1", "STATUS=hello"]
            before = asyncio.all_tasks()
            async with watchdog(notifier, 0.01):
                await inbox.until("WATCHDOG=1", count=2, timeout_s=5)
            assert asyncio.all_tasks() == before  # the ping task was cancelled and awaited
        finally:
            notifier.close()
    assert not Notifier.from_env({}).is_enabled
    Notifier.from_env({}).notify("READY=1")  # outside systemd: nothing happens
