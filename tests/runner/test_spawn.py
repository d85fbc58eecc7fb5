"""The fork-server spawner: forks confined workers, falls back to cold starts while it is down,
and restarts it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest

from runner.launcher import WorkerLauncher
from runner.spawn import ColdSpawner, ForkServerSpawner, OwnChild

from .conftest import FIXTURES

pytestmark = pytest.mark.integration
ECHO = Path(FIXTURES / "echo").resolve()


async def start(launcher: WorkerLauncher, tenant: str = "t") -> object:
    return await launcher.start(plugin_id="dev.corral.test.echo", tenant_id=tenant, bundle_dir=ECHO)


async def test_workers_are_forked_from_the_fork_server(launcher: WorkerLauncher) -> None:
    assert isinstance(launcher.spawner, ForkServerSpawner)
    worker = await launcher.start(plugin_id="dev.corral.test.echo", tenant_id="t", bundle_dir=ECHO)
    server = launcher.spawner.server
    assert server is not None and server.is_alive
    assert not isinstance(worker._process, OwnChild)  # not our child: the fork-server's
    assert psutil.Process(worker.pid).ppid() == server.pid
    await worker.stop()


async def test_a_dead_fork_server_means_cold_starts_then_a_restart(
    launcher: WorkerLauncher,
) -> None:
    spawner = launcher.spawner
    assert isinstance(spawner, ForkServerSpawner)
    spawner._restart_interval_s = 0.5
    first = await launcher.start(plugin_id="dev.corral.test.echo", tenant_id="t", bundle_dir=ECHO)
    server = spawner.server
    assert server is not None
    os.kill(server.pid, signal.SIGKILL)
    async with asyncio.timeout(5):
        await first.wait_closed()  # its workers die with it (parent-death signal)
    await first.kill()
    async with asyncio.timeout(5):
        while server.is_alive:
            await asyncio.sleep(0.01)
    # Within the restart interval the spawner does not retry: this worker starts cold.
    cold = await launcher.start(plugin_id="dev.corral.test.echo", tenant_id="t", bundle_dir=ECHO)
    assert isinstance(cold._process, OwnChild)
    await cold.ping(timeout_s=5)
    await cold.stop()
    await asyncio.sleep(0.6)
    forked = await launcher.start(plugin_id="dev.corral.test.echo", tenant_id="t", bundle_dir=ECHO)
    assert spawner.server is not None and spawner.server is not server
    assert spawner.server.is_alive and not isinstance(forked._process, OwnChild)
    await forked.ping(timeout_s=5)
    await forked.stop()


async def test_an_unconfined_request_always_starts_cold() -> None:
    from runner.spawn import unconfined
    from runner.worker import PluginWorker, WorkerSpec

    spawner = ForkServerSpawner(sys_path=[])
    try:
        spec = WorkerSpec(
            plugin_id="dev.corral.test.echo", tenant_id="t", launch=unconfined(str(ECHO))
        )
        worker = await PluginWorker.start(spec, spawner)
        assert isinstance(worker._process, OwnChild) and spawner.server is None
        await worker.stop()
    finally:
        await spawner.close()
    assert isinstance(ColdSpawner(), ColdSpawner)
