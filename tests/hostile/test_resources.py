"""Hostile plugins exhausting resources: memory, CPU time, and the host's stderr relay.

The memory cgroup (where the probe finds one) OOM-kills a worker that fills memory, RLIMIT_AS
refuses one huge allocation, RLIMIT_CPU kills a spinning worker even when it ignores SIGXCPU,
and the host's stderr relay reads a flood in bounded chunks.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from protocol import CallTimeoutError, ConnectionClosedError
from runner.launcher import WorkerLauncher
from runner.worker import PluginWorker
from sandbox import Layer, ResourceLimits

from .conftest import (
    BUNDLE,
    EXTRA_UIDS,
    PLUGIN_ID,
    Host,
    PeakRss,
    assert_no_scratch,
    assert_refused,
    close_spawner,
    make_spawner,
    new_state_dir,
    open_sandbox,
    remove_tree,
    spawner_pids,
    wait_reaped,
)

pytestmark = [pytest.mark.hostile, pytest.mark.asyncio(loop_scope="module")]

GIB = 1024**3
MIB = 1024**2
CPU_SECONDS = 2
SPIN_BOUND_S = 15.0  # CPU time, not wall time, triggers the limit: leave room for a busy machine
FLOOD_BYTES = GIB
FLOOD_BOUND_S = 30.0
RSS_GROWTH_LIMIT = 100 * MIB


async def test_a_4_gib_allocation_fails_and_the_worker_keeps_serving(host: Host) -> None:
    assert host.attacker is not None
    result = await host.attack("alloc", {"bytes": 4 * GIB})
    attempts = assert_refused(result)
    assert attempts[0]["error"] == "MemoryError()"  # bytearray(4 GiB): RLIMIT_AS
    await host.attacker.ping(timeout_s=2)
    await host.assert_healthy()


async def test_filling_4_gib_gets_the_worker_killed_not_the_host(host: Host) -> None:
    worker = await host.start()
    with PeakRss() as rss:
        try:
            result = await host.attack("alloc_touch", {"bytes": 4 * GIB}, worker=worker)
        except ConnectionClosedError:
            status = await wait_reaped(worker)
            assert status == -signal.SIGKILL  # the cgroup's OOM killer
        else:
            # Without a memory cgroup, RLIMIT_AS stops it first.
            assert not host.report.is_available(Layer.CGROUP), result.errors
            assert_refused(result)
    assert rss.growth_bytes < RSS_GROWTH_LIMIT
    await worker.stop(grace_s=1)
    await host.assert_healthy()


@pytest_asyncio.fixture(loop_scope="module")
async def cpu_limited(host: Host) -> AsyncIterator[WorkerLauncher]:
    """A second sandbox, same spawner kind, whose workers get CPU_SECONDS of CPU time."""
    state_dir = new_state_dir()
    sandbox = await open_sandbox(state_dir, EXTRA_UIDS, ResourceLimits(cpu_seconds=CPU_SECONDS))
    spawner = make_spawner(host.kind, sandbox)
    try:
        yield WorkerLauncher(sandbox, spawner)
    finally:
        await close_spawner(spawner)
        try:
            assert_no_scratch(state_dir)  # processes and cgroups: checked with the module's host
        finally:
            remove_tree(state_dir)


async def test_spinning_the_cpu_forever_gets_the_worker_killed(
    host: Host, cpu_limited: WorkerLauncher
) -> None:
    worker = await cpu_limited.start(plugin_id=PLUGIN_ID, tenant_id="spinner", bundle_dir=BUNDLE)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionClosedError):
            await host.attack("spin", worker=worker, timeout_s=SPIN_BOUND_S)
        took = time.monotonic() - started
        # It ignores SIGXCPU at the soft limit; the hard limit (one second later) kills it.
        assert await wait_reaped(worker) == -signal.SIGKILL
        assert CPU_SECONDS <= took < SPIN_BOUND_S
    finally:
        await worker.kill()
    await host.assert_healthy(also_known=spawner_pids(cpu_limited.spawner))


async def _flood(host: Host, worker: PluginWorker, stream: str, line_bytes: int) -> str:
    """Run one flood; return "done" or "timed out" (both end the call within the bound)."""
    value = {"stream": stream, "bytes": FLOOD_BYTES, "line_bytes": line_bytes}
    try:
        result = await host.attack("flood", value, worker=worker, timeout_s=FLOOD_BOUND_S)
    except CallTimeoutError:
        return "timed out"
    assert result.valid, result.errors
    await worker.ping(timeout_s=2)  # 1 GiB on stdout did not corrupt the channel
    return "done"


async def test_flooding_stdout_and_stderr_keeps_host_memory_bounded(host: Host) -> None:
    assert host.bystander is not None
    to_stdout, to_stderr = await host.start(), await host.start()
    with PeakRss() as rss:
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            floods = [
                group.create_task(_flood(host, to_stdout, "stdout", 4096)),  # 4 KiB lines
                group.create_task(_flood(host, to_stderr, "stderr", 0)),  # one 1 GiB "line"
            ]
            await asyncio.sleep(0.5)
            await host.bystander.ping(timeout_s=2)  # answers in the middle of both floods
        took = time.monotonic() - started
    outcomes = [flood.result() for flood in floods]
    assert took < FLOOD_BOUND_S + 2, outcomes
    assert rss.growth_bytes < RSS_GROWTH_LIMIT, f"host RSS grew by {rss.growth_bytes / MIB:.0f} MiB"
    for worker in (to_stdout, to_stderr):
        async with asyncio.timeout(5):
            await worker.stop(grace_s=1)
        assert len(max(worker.stderr_tail, key=len)) <= 8192  # the relay's line cap
    await host.assert_healthy()
