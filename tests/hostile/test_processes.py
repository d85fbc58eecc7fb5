"""Hostile plugins reaching for processes: exec, fork bombs, signals to the host, ptrace.

Seccomp answers EPERM for each (ENOSYS for clone3, so glibc falls back to clone, whose flags
it can inspect); reading another process's /proc files fails in Landlock (EACCES).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from sandbox import Layer

from .conftest import Host, assert_refused, needs_any

pytestmark = [pytest.mark.hostile, pytest.mark.asyncio(loop_scope="module")]


class Received:
    """Signals that reached this process."""

    def __init__(self) -> None:
        self.signals: list[int] = []


@pytest.fixture
def sigusr2() -> Iterator[Received]:
    """Record SIGUSR2 instead of dying of it (its default action terminates the process)."""
    received = Received()
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.signals.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGUSR2, previous)


async def test_exec_of_bin_sh_is_refused(host: Host) -> None:
    needs_any(host.report, Layer.SECCOMP, Layer.LANDLOCK)
    result = await host.attack("exec")
    attempts = assert_refused(result)
    if host.report.is_available(Layer.SECCOMP):
        errnos = {a["attempt"]: a["errno"] for a in attempts}
        assert errnos == {
            "subprocess.run /bin/sh": "EPERM",
            "os.posix_spawn /bin/sh": "EPERM",
            "os.system": None,  # glibc's system() returns 127 << 8: no shell was started
            "os.execv /bin/sh": "EPERM",
        }
    await host.assert_healthy()


async def test_a_fork_bomb_is_refused_and_threads_still_work(host: Host) -> None:
    needs_any(host.report, Layer.SECCOMP)  # the pids cgroup and RLIMIT_NPROC only cap it
    result = await host.attack("fork", {"count": 64})
    attempts = assert_refused(result, errnos={"EPERM", "ENOSYS"})  # ENOSYS: clone3 only
    assert {a["attempt"]: a["errno"] for a in attempts}["os.fork loop"] == "EPERM"
    control = await host.attack("threads", {"count": 8})
    assert control.valid, control.errors
    await host.assert_healthy()


async def test_signalling_the_host_is_refused(host: Host, sigusr2: Received) -> None:
    needs_any(host.report, Layer.SECCOMP, Layer.LANDLOCK, Layer.CREDENTIALS)
    assert host.attacker is not None
    # The host, and the worker's own parent: the host again, or the fork-server.
    targets = [os.getpid()]
    if host.fork_server_pid is not None:
        targets.append(host.fork_server_pid)
    result = await host.attack("signal", {"pids": targets, "signal": int(signal.SIGUSR2)})
    attempts = assert_refused(result, errnos={"EPERM"})
    assert len(attempts) == 4 * len(targets) + 1  # kill, tgkill, pidfd, killpg each; kill(-1)
    await asyncio.sleep(0.05)  # a signal that got through would have been handled by now
    assert sigusr2.signals == []
    os.kill(os.getpid(), signal.SIGUSR2)  # the control: the handler does record a signal
    await asyncio.sleep(0.05)
    assert sigusr2.signals == [signal.SIGUSR2]
    await host.assert_healthy()  # includes: the fork-server is alive and the same process


async def test_ptrace_of_a_sibling_worker_or_the_host_is_refused(host: Host) -> None:
    needs_any(host.report, Layer.SECCOMP, Layer.CREDENTIALS)
    assert host.bystander is not None
    targets = [host.bystander.pid, os.getpid()]  # a sibling, and the host (root)
    if host.fork_server_pid is not None:
        targets.append(host.fork_server_pid)  # the attacker's own parent, running as root
    result = await host.attack("ptrace", {"pids": targets})
    attempts = assert_refused(result, errnos={"EPERM", "EACCES"})
    for attempt in attempts:
        syscall = not attempt["attempt"].startswith("read /proc")
        assert attempt["errno"] == ("EPERM" if syscall else "EACCES"), attempt
    await host.assert_healthy()
