"""SIGKILL the host: every worker, forked or cold, and the fork-server must die with it.

`host_process.py` is a real host in a process of its own; its workers first try to shed their
parent-death signal. The test makes itself a child subreaper, so the orphans come to it and it
can tell how each one died: PID 1 on this kind of machine reaps orphans only every second or so,
which would leave zombies around for reasons that are not corral's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from protocol.categories.input_validator import ValidationResult

from .conftest import BUNDLE, assert_refused, new_state_dir, remove_tree

pytestmark = pytest.mark.hostile

HOST_SCRIPT = Path(__file__).with_name("host_process.py")
FORKED_WORKERS = 4
COLD_WORKERS = 2
START_TIMEOUT_S = 30.0
DEATH_BOUND_S = 1.0
PR_SET_CHILD_SUBREAPER = 36
REAPED_ELSEWHERE = "reaped by its parent"


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make this process the reaper of its orphaned descendants for the test's duration."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reap(pid: int) -> int | str | None:
    """Reap `pid` if it has exited: return its status as asyncio reports it (-9: SIGKILL).

    Returns REAPED_ELSEWHERE for a process that is gone but was not ours to reap, and None
    while it still runs.
    """
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None if psutil.pid_exists(pid) else REAPED_ELSEWHERE
    if result is None:
        return None
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


def _remove_stale_cgroups(parents: list[str], host_pid: int) -> list[str]:
    """Remove the dead host's worker cgroups; return any that still held a process."""
    busy = []
    for parent in parents:
        for cgroup in Path(parent).glob(f"*.{host_pid}.*"):
            procs = (cgroup / "cgroup.procs").read_text().split()
            if procs:
                busy.append(f"{cgroup}: {procs}")
                continue
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    return busy


def _kill_survivors(pids: list[int]) -> None:
    """SIGKILL and reap whatever outlived the host (only when the test has failed)."""
    for pid in pids:
        if _reap(pid) is None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)  # our child (subreaper), not reaped: still this pid
                os.waitpid(pid, 0)


@dataclass
class HostReport:
    """What host_process.py printed."""

    host: int
    fork_server: int
    forked: list[int]
    cold: list[int]
    cgroups: list[str]
    pdeathsig_attempts: list[str]

    @property
    def victims(self) -> list[int]:
        return [self.fork_server, *self.forked, *self.cold]


async def _wait_for_deaths(pids: list[int], bound_s: float) -> dict[int, int | str]:
    """Reap whichever of `pids` die within `bound_s`; return their statuses."""
    deadline = time.monotonic() + bound_s
    statuses: dict[int, int | str] = {}
    while len(statuses) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in statuses and (status := _reap(pid)) is not None:
                statuses[pid] = status
        await asyncio.sleep(0.005)
    return statuses


async def test_sigkilling_the_host_takes_every_worker_with_it(subreaper: None) -> None:
    state_dir = new_state_dir()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HOST_SCRIPT),
        str(state_dir),
        str(BUNDLE),
        str(FORKED_WORKERS),
        str(COLD_WORKERS),
        stdout=asyncio.subprocess.PIPE,
    )
    cgroup_parents: list[str] = []
    victims: list[int] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await process.stdout.readline()
        assert line, f"the host died at start (status {await process.wait()})"
        report = HostReport(**json.loads(line))
        cgroup_parents, victims = report.cgroups, report.victims
        assert len(report.forked) == FORKED_WORKERS and len(report.cold) == COLD_WORKERS
        assert {psutil.Process(p).ppid() for p in report.forked} == {report.fork_server}
        assert {psutil.Process(p).ppid() for p in report.cold} == {process.pid}
        shed = ValidationResult(valid=False, errors=report.pdeathsig_attempts)
        assert_refused(shed, errnos={"EPERM"})  # seccomp pins PDEATHSIG to SIGKILL

        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert await process.wait() == -signal.SIGKILL
        statuses = await _wait_for_deaths(report.victims, DEATH_BOUND_S)
        took = time.monotonic() - killed_at

        survivors = [p for p in report.victims if p not in statuses]
        assert not survivors, f"pids alive {DEATH_BOUND_S} s after the host died: {survivors}"
        # PDEATHSIG (-9) races the host's files closing, which comes first in the kernel's
        # exit path: a worker may see EOF on stdin and exit 0, and the fork-server may see
        # its control socket close, kill and reap its workers itself, and exit 0; the host's
        # own dying child-watcher thread may reap the fork-server. Any of these is fine.
        assert set(statuses.values()) <= {-signal.SIGKILL, 0, REAPED_ELSEWHERE}, statuses
        assert took < DEATH_BOUND_S
        assert [p for p in report.victims if psutil.pid_exists(p)] == []  # no zombie either
        assert psutil.Process().children(recursive=True) == []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        _kill_survivors(victims)
        busy = _remove_stale_cgroups(cgroup_parents, process.pid)
        remove_tree(state_dir)
    assert busy == [], f"cgroups still hold processes: {busy}"
