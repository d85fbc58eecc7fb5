"""SIGTERM: in-flight requests finish, new connections are refused, workers stop; twice: forced."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import aiohttp
import psutil
import pytest

from tests.runner.daemon_harness import SLOW, Daemon, running_daemon, wait_ready

pytestmark = pytest.mark.integration
TENANT = "tenant-a"


async def activate_slow_hooks(daemon: Daemon) -> None:
    """Install the slowhooks bundle and enable it for TENANT through the admin API."""
    headers = {"X-API-Key": daemon.key}
    async with aiohttp.ClientSession(daemon.base, headers=headers) as http:
        bundle = str(daemon.state / "bundles" / "slowhooks")
        async with http.post("/api/v1/admin/plugins", json={"path": bundle}) as installed:
            assert installed.status == 201, await installed.text()
        body = {"enabled": True, "settings": {}}
        async with http.put(f"/plugins/{SLOW}/config?tenant_id={TENANT}", json=body) as put:
            assert put.status == 200, await put.text()


async def sleep_request(daemon: Daemon, seconds: float) -> tuple[int, str]:
    """POST to the slow route on a connection of its own; return status and body."""
    url = f"{daemon.base}/webhook/slowhooks/{TENANT}/sleep"
    async with aiohttp.ClientSession() as http, http.post(url, data=str(seconds)) as answer:
        return answer.status, await answer.text()


async def wait_inflight(daemon: Daemon, count: int) -> None:
    """Poll the workers endpoint until `count` calls are in flight for TENANT (bounded)."""
    headers = {"X-API-Key": daemon.key}
    async with aiohttp.ClientSession(daemon.base, headers=headers) as http:
        for _ in range(300):
            async with http.get("/api/v1/workers") as answer:
                rows = (await answer.json())["workers"]
            if sum(r["inflight"] for r in rows if r["tenant_id"] == TENANT) >= count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"never {count} calls in flight")


async def wait_refused(daemon: Daemon) -> None:
    """Return once a new TCP connection is refused (the listener closed), bounded."""
    port = int(daemon.base.rsplit(":", 1)[1])
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
    raise AssertionError("the daemon kept accepting connections after SIGTERM")


async def assert_gone(processes: list[psutil.Process]) -> None:
    """Every process in `processes` has exited (zombies awaiting init count), bounded."""

    def alive() -> list[int]:
        out = []
        for p in processes:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
        return out

    for _ in range(200):
        if not alive():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"processes outlived the daemon: {alive()}")


async def test_sigterm_lets_in_flight_requests_finish_and_stops_workers() -> None:
    async with running_daemon(env={"CORRAL_SHUTDOWN_GRACE_SECONDS": "60"}) as daemon:
        await wait_ready(daemon)
        await activate_slow_hooks(daemon)
        children = daemon.descendants()
        assert children, "the activation should run a worker"
        slow = asyncio.create_task(sleep_request(daemon, 1.5))
        try:
            await wait_inflight(daemon, 1)
            daemon.process.send_signal(signal.SIGTERM)
            await wait_refused(daemon)
            assert await slow == (200, "slept")
        finally:
            slow.cancel()
            await asyncio.wait([slow])
        assert await daemon.exit_status() == 0
        await assert_gone(children)
    assert "stopped cleanly" in "".join(daemon.stderr)


async def test_a_second_sigterm_forces_the_exit_and_leaves_no_worker() -> None:
    async with running_daemon(env={"CORRAL_SHUTDOWN_GRACE_SECONDS": "120"}) as daemon:
        await wait_ready(daemon)
        await activate_slow_hooks(daemon)
        children = daemon.descendants()
        short = asyncio.create_task(sleep_request(daemon, 1.0))
        long = asyncio.create_task(sleep_request(daemon, 250))
        try:
            await wait_inflight(daemon, 2)
            daemon.process.send_signal(signal.SIGTERM)
            await wait_refused(daemon)
            assert await short == (200, "slept")
            assert daemon.process.returncode is None  # still waiting for the long request
            daemon.process.send_signal(signal.SIGTERM)
            assert await daemon.exit_status(timeout_s=30) == 128 + signal.SIGTERM
            try:  # the worker was killed: a 502, or the connection closed with the daemon
                assert (await long)[0] == 502
            except aiohttp.ClientError:
                pass
        finally:
            for task in (short, long):
                task.cancel()
            await asyncio.wait([short, long])
        await assert_gone(children)
    assert "second SIGTERM: forcing the exit" in "".join(daemon.stderr)
