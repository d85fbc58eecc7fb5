"""Scale to zero with real, sandboxed workers: an idle worker stops, the next call starts one.

Every test uses an idle time of 1 s and asserts states, pids and answers, never durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol import load_manifest
from protocol.categories.input_validator import ValidationInput, ValidationResult
from runner.launcher import WorkerLauncher
from runner.restart_policy import RestartSettings
from runner.slot_types import IDLE_ENV, WatchSettings, WorkerState, idle_seconds_from_env
from runner.supervisor import ActivationKey, ActivationNotFoundError, ActivationSpec, Supervisor
from runner.worker import PluginWorker
from tests.runner.api_harness import HOOKS, running_api

from .conftest import FIXTURES

pytestmark = pytest.mark.integration

ECHO = FIXTURES / "echo"
ECHO_ID = "dev.corral.test.echo"
MANIFEST = load_manifest(ECHO)
IDLE_S = 1.0
IDLE_WATCH = WatchSettings(
    ping_interval_s=0.2,  # several pings fall inside each idle time: they must not count
    ping_timeout_s=2.0,
    stop_grace_s=1.0,
    drain_timeout_s=5.0,
    start_wait_s=10.0,
    memory_check_interval_s=0.2,
    idle_s=IDLE_S,
)
# One failure would open the circuit: idle stops must never be counted as one.
TOUCHY = RestartSettings(backoff_base_s=0.05, backoff_cap_s=0.1, circuit_max_restarts=0)
WAIT_S = 15.0  # bound on every wait for a state; generous for a loaded machine


def spec(**config: Any) -> ActivationSpec:
    return ActivationSpec(
        tenant_id="tenant-a",
        plugin_id=ECHO_ID,
        bundle_dir=Path(ECHO).resolve(),
        manifest=MANIFEST,
        config=config,
    )


def ask(field: str, value: Any = None) -> ValidationInput:
    return ValidationInput(field=field, value=value)


class Starts:
    """A worker factory over the real launcher that counts the workers it started."""

    def __init__(self, launcher: WorkerLauncher) -> None:
        self.launcher = launcher
        self.count = 0

    async def __call__(self, s: ActivationSpec) -> PluginWorker:
        self.count += 1
        return await self.launcher.start(
            plugin_id=s.plugin_id,
            tenant_id=s.tenant_id,
            bundle_dir=s.bundle_dir,
            config=s.config,
            config_digest=s.config_digest,
        )


@pytest.fixture
def starts(launcher: WorkerLauncher) -> Starts:
    return Starts(launcher)


@pytest.fixture
async def supervisor(starts: Starts) -> AsyncIterator[Supervisor]:
    sup = Supervisor(starts, watch=IDLE_WATCH, restart=TOUCHY)
    try:
        yield sup
    finally:
        await sup.close()


async def pid_of(supervisor: Supervisor, key: ActivationKey) -> int:
    result = await supervisor.call(
        key, "input_validator.validate", ask("pid"), timeout_s=5, result_type=ValidationResult
    )
    return int(result.errors[0])


async def until_state(supervisor: Supervisor, state: WorkerState) -> None:
    async with asyncio.timeout(WAIT_S):
        while supervisor.statuses()[0].slots[0].state is not state:
            await asyncio.sleep(0.02)


async def until_gone(pid: int) -> None:
    async with asyncio.timeout(WAIT_S):
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(0.02)


def test_the_idle_time_comes_from_the_environment() -> None:
    assert idle_seconds_from_env({}) == 0.0
    assert idle_seconds_from_env({IDLE_ENV: " 2.5 "}) == 2.5
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ValueError, match=IDLE_ENV):
            idle_seconds_from_env({IDLE_ENV: bad})


async def test_an_idle_worker_stops_and_the_next_call_starts_a_new_one(
    supervisor: Supervisor, starts: Starts
) -> None:
    s = spec()
    assert await supervisor.activate(s, wait_s=WAIT_S)
    first = await pid_of(supervisor, s.key)
    await until_state(supervisor, WorkerState.IDLE)  # despite the pings every 0.2 s
    await until_gone(first)
    idle = supervisor.statuses()[0].slots[0]
    assert (idle.pid, idle.inflight, idle.restarts, idle.last_exit) == (None, 0, 0, None)
    assert idle.retry_after_s is None

    second = await pid_of(supervisor, s.key)  # the first call after the stop succeeds
    assert second != first and psutil.pid_exists(second)
    assert starts.count == 2
    again = supervisor.statuses()[0].slots[0]
    assert (again.state, again.pid, again.restarts) == (WorkerState.READY, second, 0)


async def test_idle_stops_never_count_as_restarts_or_open_the_circuit(
    supervisor: Supervisor, starts: Starts
) -> None:
    s = spec()
    assert await supervisor.activate(s, wait_s=WAIT_S)
    pids = []
    for _ in range(2):  # with circuit_max_restarts=0, one counted failure would open it
        pids.append(await pid_of(supervisor, s.key))
        await until_state(supervisor, WorkerState.IDLE)
    pids.append(await pid_of(supervisor, s.key))
    assert len(set(pids)) == 3 and starts.count == 3
    status = supervisor.statuses()[0].slots[0]
    assert (status.state, status.restarts, status.retry_after_s) == (WorkerState.READY, 0, None)


async def test_concurrent_first_calls_after_an_idle_stop_share_one_start(
    supervisor: Supervisor, starts: Starts
) -> None:
    s = spec()
    assert await supervisor.activate(s, wait_s=WAIT_S)
    await until_state(supervisor, WorkerState.IDLE)
    assert starts.count == 1
    pids = await asyncio.gather(*(pid_of(supervisor, s.key) for _ in range(12)))
    assert len(set(pids)) == 1
    assert starts.count == 2


async def test_a_slow_call_in_flight_keeps_the_worker_past_the_idle_time(
    supervisor: Supervisor,
) -> None:
    s = spec()
    assert await supervisor.activate(s, wait_s=WAIT_S)
    before = await pid_of(supervisor, s.key)
    seen: set[WorkerState] = set()

    async def watch() -> None:
        while True:
            seen.add(supervisor.statuses()[0].slots[0].state)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        slow = await supervisor.call(
            s.key,
            "input_validator.validate",
            ask("sleep", 3 * IDLE_S),
            timeout_s=10,
            result_type=ValidationResult,
        )
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    assert slow.valid
    assert seen == {WorkerState.READY}
    assert await pid_of(supervisor, s.key) == before  # idleness counts from the call's end


async def test_an_idle_activation_can_be_reconfigured(supervisor: Supervisor) -> None:
    s = spec(greeting="hello")
    assert await supervisor.activate(s, wait_s=WAIT_S)
    await until_state(supervisor, WorkerState.IDLE)
    await supervisor.reconfigure(replace(s, config={"greeting": "bonjour"}))
    result = await supervisor.call(
        s.key, "input_validator.validate", ask("config"), timeout_s=5, result_type=ValidationResult
    )
    assert "greeting=bonjour" in result.errors
    await until_state(supervisor, WorkerState.IDLE)  # and it idles out again
    assert supervisor.statuses()[0].slots[0].restarts == 0


async def test_an_idle_activation_can_be_restarted_and_deactivated(supervisor: Supervisor) -> None:
    s = spec()
    assert await supervisor.activate(s, wait_s=WAIT_S)
    await until_state(supervisor, WorkerState.IDLE)
    await supervisor.restart(s.key)  # nothing runs to replace: it stays idle
    assert supervisor.statuses()[0].slots[0].state is WorkerState.IDLE
    await supervisor.deactivate(s.key)
    assert supervisor.statuses() == []
    with pytest.raises(ActivationNotFoundError):
        await pid_of(supervisor, s.key)


async def test_a_webhook_wakes_an_idle_worker_and_the_api_shows_it_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(IDLE_ENV, str(IDLE_S))  # read where `corral serve` reads it
    async with running_api() as api:
        installed = await api.call(
            "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
        )
        assert installed.status == 201, installed.text
        enabled = await api.call(
            "PUT",
            f"/plugins/{HOOKS}/config?tenant_id=tenant-a",
            json_body={"enabled": True, "settings": {"secret": "hook-secret-a"}},
        )
        assert enabled.status == 200, enabled.text

        async def worker_row() -> dict[str, Any]:
            listing = await api.call("GET", "/api/v1/workers")  # checked against the OpenAPI
            rows = [w for w in listing.body["workers"] if w["plugin_id"] == HOOKS]
            assert len(rows) == 1
            row: dict[str, Any] = rows[0]
            return row

        async with asyncio.timeout(WAIT_S):
            while (row := await worker_row())["state"] != "idle":
                await asyncio.sleep(0.05)
        assert row["pid"] is None and row["restarts"] == 0 and row["rss_bytes"] is None
        ready = await api.call("GET", "/readyz")
        assert ready.status == 200, ready.text

        hook = await api.call(
            "POST", "/webhook/hooks/tenant-a/open", key=None, data=b"hi", check_documented=False
        )
        assert hook.status == 200, hook.text
        assert hook.body["tenant"] == "tenant-a"
        row = await worker_row()
        assert row["state"] == "ready" and row["pid"] is not None and row["restarts"] == 0
