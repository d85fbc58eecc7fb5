"""Process hygiene: the worker dies with its host (PDEATHSIG) and leaves no orphan."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from sandbox import SandboxPolicy

from .conftest import FIXTURES

pytestmark = pytest.mark.integration


def _real_uid(pid: int) -> int | None:
    try:
        return psutil.Process(pid).uids().real
    except psutil.NoSuchProcess:
        return None


def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `predicate` (blocking; run it in a thread) until true or `timeout_s` elapses."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_worker_dies_within_a_second_of_its_host(policy: SandboxPolicy) -> None:
    host = await asyncio.create_subprocess_exec(
        sys.executable, str(FIXTURES / "fake_host.py"), policy.to_json(),
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert host.stdout is not None
        async with asyncio.timeout(10):
            worker_pid = int(await host.stdout.readline())
            if policy.uid is not None:  # confined once it runs as the worker uid
                uid = policy.uid
                assert await asyncio.to_thread(_wait_until, lambda: _real_uid(worker_pid) == uid, 5)
            await asyncio.sleep(0.2)  # past the bootstrap, into the plugin's sleep
        assert not _gone(worker_pid)
        host.kill()
        await host.wait()
        died = await asyncio.to_thread(_wait_until, lambda: _gone(worker_pid), 1.0)
        assert died, "the worker outlived its host by more than 1 s"
    finally:
        if host.returncode is None:
            host.kill()
            await host.wait()
        if "worker_pid" in locals() and not _gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
