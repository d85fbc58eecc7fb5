"""Resource exhaustion from a real sandbox: memory, CPU, processes, and the limits behind them."""

from __future__ import annotations

import dataclasses
import errno
import signal
from pathlib import Path

import pytest

from sandbox import SandboxPolicy
from sandbox.policy import MIB

from .conftest import RunConfined, require_root

pytestmark = pytest.mark.integration

GIB = 1024 * MIB


def _limits(policy: SandboxPolicy, **changes: int | None) -> SandboxPolicy:
    return dataclasses.replace(policy, limits=dataclasses.replace(policy.limits, **changes))


async def test_allocating_4_gib_fails(run_confined: RunConfined, policy: SandboxPolicy) -> None:
    outcome = await run_confined(policy, "alloc", str(4 * GIB))
    assert outcome.refused(), outcome.attempt
    assert outcome.attempt["error"] == "MemoryError"


async def test_cpu_spin_is_killed_by_rlimit_cpu(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    outcome = await run_confined(_limits(policy, cpu_seconds=1), "spin")
    assert outcome.returncode in (-signal.SIGXCPU, -signal.SIGKILL), outcome.stderr
    assert outcome.elapsed_s < 10


async def test_file_size_and_open_files_are_capped(
    run_confined: RunConfined, policy: SandboxPolicy, scratch: Path
) -> None:
    capped = _limits(policy, file_size_bytes=MIB, open_files=32)
    big = await run_confined(capped, "write_bytes", str(scratch / "big"), str(2 * MIB))
    assert big.refused(errno.EFBIG), big.attempt
    many = await run_confined(capped, "open_files", "64")
    assert many.refused(errno.EMFILE), many.attempt


async def test_rlimit_nproc_caps_threads_of_the_worker_uid(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    require_root()  # RLIMIT_NPROC counts per real uid and is ignored for root
    outcome = await run_confined(_limits(policy, processes=4, pids=None), "threads", "8")
    assert outcome.refused(), outcome.attempt
    assert outcome.attempt["error"] == "RuntimeError"  # "can't start new thread"
