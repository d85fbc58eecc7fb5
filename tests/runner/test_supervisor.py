"""The supervisor with real, sandboxed workers: crash loops, hangs, memory, reconfiguration,
tenant isolation and teardown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol import CallTimeoutError, load_manifest
from protocol.categories.input_validator import ValidationInput, ValidationResult
from runner.launcher import WorkerLauncher
from runner.restart_policy import RestartSettings
from runner.slot_types import CircuitOpenError, UnavailableError, WatchSettings, WorkerState
from runner.supervisor import (
    GLOBAL,
    ActivationKey,
    ActivationNotFoundError,
    ActivationSpec,
    PinningError,
    Supervisor,
)
from runner.worker import PluginWorker

from .conftest import FIXTURES

pytestmark = pytest.mark.integration

ECHO = FIXTURES / "echo"
ECHO_ID = "dev.corral.test.echo"
MANIFEST = load_manifest(ECHO)
FAST_WATCH = WatchSettings(
    ping_interval_s=0.2,
    ping_timeout_s=0.3,
    stop_grace_s=0.5,
    drain_timeout_s=2.0,
    start_wait_s=5.0,
    memory_check_interval_s=0.2,
)
FAST_RESTART = RestartSettings(
    backoff_base_s=0.05,
    backoff_cap_s=0.2,
    stable_after_s=60,
    circuit_max_restarts=3,
    circuit_window_s=30,
    circuit_cooldown_s=1.0,
)


def spec(tenant: str = "tenant-a", **config: Any) -> ActivationSpec:
    return ActivationSpec(
        tenant_id=tenant,
        plugin_id=ECHO_ID,
        bundle_dir=Path(ECHO).resolve(),
        manifest=MANIFEST,
        config=config,
    )


def ask(field: str, value: Any = None) -> ValidationInput:
    return ValidationInput(field=field, value=value)


async def pid_of(supervisor: Supervisor, key: ActivationKey) -> int:
    result = await supervisor.call(
        key, "input_validator.validate", ask("pid"), timeout_s=5, result_type=ValidationResult
    )
    return int(result.errors[0])


def make_supervisor(launcher: WorkerLauncher, watch: WatchSettings = FAST_WATCH) -> Supervisor:
    async def start(s: ActivationSpec) -> PluginWorker:
        return await launcher.start(
            plugin_id=s.plugin_id,
            tenant_id=s.tenant_id,
            bundle_dir=s.bundle_dir,
            config=s.config,
            config_digest=s.config_digest,
        )

    return Supervisor(start, watch=watch, restart=FAST_RESTART)


@pytest.fixture
async def supervisor(launcher: WorkerLauncher) -> AsyncIterator[Supervisor]:
    sup = make_supervisor(launcher)
    try:
        yield sup
    finally:
        await sup.close()


async def test_a_crashed_worker_is_restarted(supervisor: Supervisor) -> None:
    s = spec()
    assert await supervisor.activate(s, wait_s=10)
    first = await pid_of(supervisor, s.key)
    with pytest.raises(Exception):  # noqa: B017 - the channel closes mid-call
        await supervisor.call(s.key, "input_validator.validate", ask("crash"), timeout_s=5)
    async with asyncio.timeout(10):
        while True:
            try:
                second = await pid_of(supervisor, s.key)
                break
            except UnavailableError:
                await asyncio.sleep(0.05)
    assert second != first
    status = supervisor.statuses()[0].slots[0]
    assert status.restarts == 1 and status.state is WorkerState.READY
    assert status.last_exit == 3


async def test_a_crash_loop_opens_the_circuit_and_a_probe_closes_it(
    launcher: WorkerLauncher,
) -> None:
    crashing = True

    async def start(s: ActivationSpec) -> PluginWorker:
        config = {**s.config, "crash_at_start": crashing}
        return await launcher.start(
            plugin_id=s.plugin_id,
            tenant_id=s.tenant_id,
            bundle_dir=s.bundle_dir,
            config=config,
            config_digest=s.config_digest,
        )

    sup = Supervisor(start, watch=FAST_WATCH, restart=FAST_RESTART)
    try:
        s = spec()
        await sup.activate(s)
        async with asyncio.timeout(20):
            while sup.statuses()[0].slots[0].state is not WorkerState.CIRCUIT_OPEN:
                await asyncio.sleep(0.05)
        status = sup.statuses()[0].slots[0]
        assert status.restarts == FAST_RESTART.circuit_max_restarts + 1
        assert status.retry_after_s is not None and 0 < status.retry_after_s <= 1.0
        with pytest.raises(CircuitOpenError) as info:
            await sup.call(s.key, "input_validator.validate", ask("pid"))
        assert info.value.retry_after_s is not None
        crashing = False  # the cause goes away; after the cool-down one probe start is tried
        async with asyncio.timeout(10):
            while sup.statuses()[0].slots[0].state is not WorkerState.READY:
                await asyncio.sleep(0.05)
        assert await pid_of(sup, s.key) > 0
    finally:
        await sup.close()


async def test_an_operator_reset_closes_the_circuit_at_once(launcher: WorkerLauncher) -> None:
    crashing = True

    async def start(s: ActivationSpec) -> PluginWorker:
        return await launcher.start(
            plugin_id=s.plugin_id,
            tenant_id=s.tenant_id,
            bundle_dir=s.bundle_dir,
            config={"crash_at_start": crashing},
            config_digest=s.config_digest,
        )

    slow_probe = RestartSettings(
        backoff_base_s=0.05, backoff_cap_s=0.1, circuit_max_restarts=2, circuit_cooldown_s=600
    )
    sup = Supervisor(start, watch=FAST_WATCH, restart=slow_probe)
    try:
        s = spec()
        await sup.activate(s)
        async with asyncio.timeout(20):
            while sup.statuses()[0].slots[0].state is not WorkerState.CIRCUIT_OPEN:
                await asyncio.sleep(0.05)
        crashing = False
        sup.reset_circuit(s.key)
        async with asyncio.timeout(10):
            while sup.statuses()[0].slots[0].state is not WorkerState.READY:
                await asyncio.sleep(0.05)
    finally:
        await sup.close()


async def test_a_hung_worker_is_caught_within_ping_interval_plus_deadline(
    supervisor: Supervisor,
) -> None:
    s = spec()
    assert await supervisor.activate(s, wait_s=10)
    hung = await pid_of(supervisor, s.key)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CallTimeoutError):
        # The handler blocks the worker's event loop: it cannot even answer a ping.
        await supervisor.call(s.key, "input_validator.validate", ask("block", 60), timeout_s=0.3)
    async with asyncio.timeout(10):
        while psutil.pid_exists(hung) and psutil.Process(hung).status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(0.02)
    caught_after = loop.time() - started
    bound = 0.3 + FAST_WATCH.ping_interval_s + FAST_WATCH.ping_timeout_s + FAST_WATCH.stop_grace_s
    assert caught_after < bound + 1.0, caught_after  # + scheduling slack on a shared machine
    async with asyncio.timeout(10):
        while supervisor.statuses()[0].slots[0].state is not WorkerState.READY:
            await asyncio.sleep(0.05)
    assert await pid_of(supervisor, s.key) != hung
    assert "hung" in (supervisor.statuses()[0].slots[0].last_error or "")


async def test_a_memory_hog_is_recycled(launcher: WorkerLauncher) -> None:
    watch = WatchSettings(
        ping_interval_s=0.5,
        ping_timeout_s=1.0,
        stop_grace_s=0.5,
        memory_check_interval_s=0.1,
        memory_soft_bytes=120 * 1024 * 1024,
    )
    sup = make_supervisor(launcher, watch)
    try:
        s = spec()
        assert await sup.activate(s, wait_s=10)
        hog = await pid_of(sup, s.key)
        await sup.call(s.key, "input_validator.validate", ask("hog", 150), timeout_s=10)
        async with asyncio.timeout(10):
            while (replacement := await pid_of(sup, s.key)) == hog:
                await asyncio.sleep(0.05)
        assert replacement != hog
        async with asyncio.timeout(10):  # the old one was drained and stopped
            while psutil.pid_exists(hog) and psutil.Process(hog).status() != "zombie":
                await asyncio.sleep(0.05)
    finally:
        await sup.close()


async def test_a_worker_is_recycled_after_max_calls(launcher: WorkerLauncher) -> None:
    watch = WatchSettings(ping_interval_s=0.2, ping_timeout_s=1.0, max_calls=5)
    sup = make_supervisor(launcher, watch)
    try:
        s = spec()
        assert await sup.activate(s, wait_s=10)
        first = await pid_of(sup, s.key)
        for _ in range(5):
            await pid_of(sup, s.key)
        async with asyncio.timeout(10):
            while await pid_of(sup, s.key) == first:
                await asyncio.sleep(0.05)
        assert sup.statuses()[0].slots[0].restarts == 0  # a recycle is not a failure
    finally:
        await sup.close()


async def test_a_config_change_under_continuous_calls_drops_none(supervisor: Supervisor) -> None:
    old = spec(greeting="old")
    assert await supervisor.activate(old, wait_s=10)
    seen: list[str] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            result = await supervisor.call(
                old.key, "input_validator.validate", ask("config"), result_type=ValidationResult
            )
            seen.append(result.errors[1])

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    await asyncio.sleep(0.3)
    await supervisor.reconfigure(spec(greeting="new"))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*callers)  # any dropped call would raise here
    assert seen[0] == "greeting=old" and seen[-1] == "greeting=new"
    assert seen.index("greeting=new") > 0
    assert "greeting=old" not in seen[seen.index("greeting=new") :]


async def test_a_failing_new_config_keeps_the_old_worker_serving(supervisor: Supervisor) -> None:
    s = spec(greeting="good")
    assert await supervisor.activate(s, wait_s=10)
    before = await pid_of(supervisor, s.key)
    with pytest.raises(Exception) as info:
        await supervisor.reconfigure(spec(greeting="bad", crash_at_start=True))
    assert "start" in str(info.value)
    assert await pid_of(supervisor, s.key) == before
    result = await supervisor.call(
        s.key, "input_validator.validate", ask("config"), result_type=ValidationResult
    )
    assert "greeting=good" in result.errors


async def test_tenant_b_can_neither_see_nor_call_tenant_as_slot(supervisor: Supervisor) -> None:
    a = spec("tenant-a", greeting="a-secret-config")
    assert await supervisor.activate(a, wait_s=10)
    assert [v.tenant_id for v in supervisor.visible("tenant-b")] == []
    with pytest.raises(ActivationNotFoundError):
        supervisor.resolve("tenant-b", ECHO_ID)
    assert supervisor.resolve("tenant-a", ECHO_ID) == a.key


async def test_a_worker_is_pinned_to_its_activation(supervisor: Supervisor) -> None:
    a = spec("tenant-a")
    assert await supervisor.activate(a, wait_s=10)
    activation = supervisor._activations[a.key]
    # Simulate a mix-up: the activation's spec changes without its workers being replaced.
    activation.spec = spec("tenant-a", greeting="changed")
    with pytest.raises(PinningError):
        await supervisor.call(a.key, "input_validator.validate", ask("pid"))


async def test_a_global_activation_is_visible_to_every_tenant(supervisor: Supervisor) -> None:
    g = spec(GLOBAL)
    assert await supervisor.activate(g, wait_s=10)
    for tenant in ("tenant-a", "tenant-b"):
        key = supervisor.resolve(tenant, ECHO_ID)
        assert key == g.key
        result = await supervisor.call(
            key, "input_validator.validate", ask("config"), result_type=ValidationResult
        )
        assert result.errors[0] == GLOBAL
    # A tenant's own activation takes precedence over the global one for that tenant only.
    own = spec("tenant-a")
    assert await supervisor.activate(own, wait_s=10)
    assert supervisor.resolve("tenant-a", ECHO_ID) == own.key
    assert supervisor.resolve("tenant-b", ECHO_ID) == g.key


async def test_deactivate_stops_only_that_tenants_workers(supervisor: Supervisor) -> None:
    a, b = spec("tenant-a"), spec("tenant-b")
    assert await supervisor.activate(a, wait_s=10)
    assert await supervisor.activate(b, wait_s=10)
    pid_a, pid_b = await pid_of(supervisor, a.key), await pid_of(supervisor, b.key)
    await supervisor.deactivate(a.key)
    assert not psutil.pid_exists(pid_a) or psutil.Process(pid_a).status() == "zombie"
    assert await pid_of(supervisor, b.key) == pid_b
    with pytest.raises(ActivationNotFoundError):
        supervisor.resolve("tenant-a", ECHO_ID)
