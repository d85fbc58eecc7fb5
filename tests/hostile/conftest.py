"""The hostile suite's host: a real `WorkerSandbox` and spawner, a bystander and an attacker.

Every module gets one `Host` per spawner ("cold", "fork"): a strict sandbox in its own state
directory, a benign bystander worker (another tenant) and an attacker worker, both running the
hostile fixture plugin. Tests aim attacks through real RPC calls and then check that the host
and the bystander are still fine. Teardown checks that nothing is left: no process, no scratch
directory, no cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import pytest
import pytest_asyncio

from protocol.categories.input_validator import ValidationInput, ValidationResult
from runner.launcher import WorkerLauncher
from runner.sandboxing import SandboxSettings, SandboxUnavailableError, WorkerSandbox
from runner.spawn import ColdSpawner, ForkServerSpawner, Spawner
from runner.worker import PluginWorker
from sandbox import Layer, Mode, ResourceLimits, SandboxReport

PLUGIN_ID = "dev.corral.test.hostile"
BUNDLE = Path(__file__).parents[1] / "fixtures" / "plugins" / "hostile"
SPAWNERS = ("cold", "fork")
METHOD = "input_validator.validate"
CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 2.0
REAP_TIMEOUT_S = 3.0
# Apart from the default pool (200000-299999), which hosts other people run here may use.
MODULE_UIDS = (63000, 63499)
EXTRA_UIDS = (63500, 63999)  # for a second sandbox alive next to a module's host


def remove_tree(path: Path) -> None:
    """Remove a directory however deep a worker nested it (shutil.rmtree recurses)."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True, timeout=30)


def new_state_dir() -> Path:
    """A state directory worker uids can traverse (pytest's tmp_path sits under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="corral-hostile-", dir="/tmp"))
    path.chmod(0o755)
    return path


async def open_sandbox(
    state_dir: Path, uids: tuple[int, int], limits: ResourceLimits | None = None
) -> WorkerSandbox:
    """Open a strict sandbox; permissive only when the probe says a layer is missing here.

    Tests that depend on a layer then skip through `needs_any`, so a test fails (never skips)
    wherever the probe reports what it needs as available.
    """
    settings = SandboxSettings(
        state_dir=state_dir,
        limits=limits or ResourceLimits(),
        first_uid=uids[0],
        last_uid=uids[1],
    )
    try:
        return await WorkerSandbox.open(settings)
    except SandboxUnavailableError:
        return await WorkerSandbox.open(replace(settings, mode=Mode.PERMISSIVE))


def make_spawner(kind: str, sandbox: WorkerSandbox) -> Spawner:
    return ColdSpawner() if kind == "cold" else ForkServerSpawner(sys_path=sandbox.sys_path)


def spawner_pids(spawner: Spawner) -> set[int]:
    """The processes a spawner keeps running besides workers: its fork-server, if any."""
    server = spawner.server if isinstance(spawner, ForkServerSpawner) else None
    return {server.pid} if server is not None else set()


async def close_spawner(spawner: Spawner) -> None:
    if isinstance(spawner, ForkServerSpawner):
        await spawner.close(timeout_s=REAP_TIMEOUT_S)


def needs_any(report: SandboxReport, *layers: Layer) -> None:
    """Skip unless at least one of `layers` works here; where one does, the test must pass."""
    if not any(report.is_available(layer) for layer in layers):
        reasons = "; ".join(f"{x}: {report.status(x).reason}" for x in layers)
        pytest.skip(f"none of the layers that stop this attack is available: {reasons}")


def records(result: ValidationResult) -> list[dict[str, Any]]:
    """The hostile plugin's per-attempt records."""
    return [json.loads(text) for text in result.errors]


def assert_refused(
    result: ValidationResult, *, errnos: set[str | None] | None = None
) -> list[dict[str, Any]]:
    """Assert no attempt of an attack succeeded (and, if given, each failed with `errnos`)."""
    attempts = records(result)
    assert attempts, "the plugin reported no attempt"
    escaped = [a for a in attempts if a["ok"]]
    assert not escaped and not result.valid, f"attack succeeded: {escaped}"
    if errnos is not None:
        unexpected = [a for a in attempts if a["errno"] not in errnos]
        assert not unexpected, f"refused, but not with {sorted(map(str, errnos))}: {unexpected}"
    return attempts


async def wait_reaped(worker: PluginWorker, timeout_s: float = REAP_TIMEOUT_S) -> int:
    """Wait until the host has reaped the worker and seen its exit status; return the status."""
    async with asyncio.timeout(timeout_s):
        while worker.returncode is None:  # PluginWorker has no exit event to wait on
            await asyncio.sleep(0.01)
    return worker.returncode


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def own_cgroups(report: SandboxReport, host_pid: int) -> list[Path]:
    """Cgroups of hostile workers a host with pid `host_pid` created (names carry both)."""
    marker = f".{PLUGIN_ID.replace('.', '_')}.{host_pid}."
    found: list[Path] = []
    for parent in report.cgroups.parents:
        with contextlib.suppress(FileNotFoundError):
            found += [p for p in Path(parent).iterdir() if marker in p.name]
    return found


@dataclass
class Host:
    """One module's sandboxed host, spawner and long-lived workers."""

    kind: str
    state_dir: Path
    sandbox: WorkerSandbox
    spawner: Spawner
    launcher: WorkerLauncher
    started: list[PluginWorker] = field(default_factory=list)
    bystander: PluginWorker | None = None
    attacker: PluginWorker | None = None
    fork_server_pid: int | None = None
    _tenants: int = 0

    @property
    def report(self) -> SandboxReport:
        return self.sandbox.report

    async def start(self, tenant: str | None = None) -> PluginWorker:
        """Start one more worker of the hostile plugin for a new tenant."""
        self._tenants += 1
        worker = await self.launcher.start(
            plugin_id=PLUGIN_ID,
            tenant_id=tenant or f"tenant-{self._tenants}",
            bundle_dir=BUNDLE,
            start_timeout_s=START_TIMEOUT_S,
        )
        self.started.append(worker)
        return worker

    async def attack(
        self,
        attack: str,
        value: dict[str, Any] | None = None,
        *,
        worker: PluginWorker | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> ValidationResult:
        """Ask a worker (the attacker by default) to run one attack; return its report."""
        target = worker or self.attacker
        assert target is not None
        result: ValidationResult = await target.call(
            METHOD,
            ValidationInput(field=attack, value=value or {}),
            timeout_s=timeout_s,
            result_type=ValidationResult,
        )
        return result

    async def whoami(self, worker: PluginWorker) -> dict[str, Any]:
        """What a worker sees of itself: uid, pid, cwd, HOME, TMPDIR, environment names."""
        answer = await self.attack("whoami", worker=worker)
        facts: dict[str, Any] = json.loads(answer.errors[0])
        return facts

    async def assert_healthy(self, also_known: Iterable[int] = ()) -> None:
        """The bystander answers, the fork-server is the same one, nothing unknown runs.

        `also_known` names processes the test started itself (another spawner's fork-server).
        """
        assert self.bystander is not None
        await self.bystander.ping(timeout_s=PING_TIMEOUT_S)
        answer = await self.attack("noop", worker=self.bystander, timeout_s=PING_TIMEOUT_S)
        assert answer.valid and answer.errors == [self.bystander.spec.tenant_id]
        if isinstance(self.spawner, ForkServerSpawner):
            server = self.spawner.server
            assert server is not None and server.is_alive
            assert server.pid == self.fork_server_pid, "the fork-server was restarted"
        known = {w.pid for w in self.started if w.returncode is None} | set(also_known)
        if self.fork_server_pid is not None:
            known.add(self.fork_server_pid)
        # A stranger would be, say, a child some worker managed to fork.
        strangers = [p for p in descendants() if p.pid not in known and _is_running(p)]
        assert not strangers, f"unexpected processes: {strangers}"

    async def close(self) -> None:
        for worker in self.started:
            await worker.kill()
        await close_spawner(self.spawner)


def _is_running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_no_scratch(state_dir: Path) -> None:
    """Every scratch directory of the sandbox in `state_dir` has been removed."""
    scratch = state_dir / "scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []


async def assert_nothing_left(report: SandboxReport, state_dir: Path) -> None:
    """No child process, scratch directory or hostile worker's cgroup of this process remains."""
    async with asyncio.timeout(REAP_TIMEOUT_S):
        while any(_is_running(p) for p in descendants()):
            await asyncio.sleep(0.01)
    assert descendants() == []
    assert_no_scratch(state_dir)
    assert own_cgroups(report, os.getpid()) == []


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=SPAWNERS)
async def host(request: pytest.FixtureRequest) -> AsyncIterator[Host]:
    """A sandboxed host with a bystander and an attacker, per module and spawner."""
    kind: str = request.param
    state_dir = new_state_dir()
    sandbox = await open_sandbox(state_dir, MODULE_UIDS)
    spawner = make_spawner(kind, sandbox)
    hosted = Host(kind, state_dir, sandbox, spawner, WorkerLauncher(sandbox, spawner))
    try:
        hosted.bystander = await hosted.start("bystander")
        hosted.attacker = await hosted.start("attacker")
        if isinstance(spawner, ForkServerSpawner):
            assert spawner.server is not None, "the fork-server did not start"
            hosted.fork_server_pid = spawner.server.pid
        yield hosted
    finally:
        await hosted.close()
        try:
            await assert_nothing_left(sandbox.report, state_dir)
        finally:
            remove_tree(state_dir)


class PeakRss:
    """Sample this process's resident memory from a thread (the loop may be busy); keep the peak."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self.baseline = self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth_bytes(self) -> int:
        return self.peak - self.baseline
