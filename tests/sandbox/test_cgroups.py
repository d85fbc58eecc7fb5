"""Per-worker cgroups: limits enforced by the kernel on a real sandboxed child, and teardown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import (
    CgroupSupport,
    CgroupVersion,
    Layer,
    SandboxPolicy,
    SandboxReport,
    WorkerCgroup,
    build_launch,
)
from sandbox.policy import MIB, ResourceLimits

from .conftest import RunConfined, require

pytestmark = pytest.mark.integration


@pytest.fixture
def support(kernel_report: SandboxReport) -> CgroupSupport:
    require(kernel_report, Layer.CGROUP)
    return kernel_report.cgroups


NewCgroup = Callable[[str, ResourceLimits], WorkerCgroup]


@pytest.fixture
def new_cgroup(support: CgroupSupport) -> Iterator[NewCgroup]:
    """Create worker cgroups named after this test process; remove them all afterwards."""
    created: list[WorkerCgroup] = []

    def create(name: str, limits: ResourceLimits) -> WorkerCgroup:
        cgroup = WorkerCgroup.create(support, f"test-{name}-{os.getpid()}", limits)
        created.append(cgroup)
        return cgroup

    yield create
    for cgroup in created:
        cgroup.remove()


def test_create_writes_limits_and_remove_deletes(
    support: CgroupSupport, new_cgroup: NewCgroup
) -> None:
    cgroup = new_cgroup("limits", ResourceLimits(memory_bytes=64 * MIB, pids=8))
    assert len(cgroup.dirs) == len(support.parents)
    written = {}
    for path in map(Path, cgroup.dirs):
        for name in ("pids.max", "memory.max", "memory.limit_in_bytes"):
            if (path / name).exists():
                written[name] = int((path / name).read_text())
    assert written.get("pids.max") == 8
    assert 64 * MIB in (written.get("memory.max"), written.get("memory.limit_in_bytes"))
    cgroup.remove()
    cgroup.remove()  # idempotent
    assert not any(os.path.exists(path) for path in cgroup.dirs)


def test_support_names_a_version_and_its_parents(support: CgroupSupport) -> None:
    assert support.version in (CgroupVersion.V2, CgroupVersion.V1)
    assert len(support.parents) == (1 if support.version is CgroupVersion.V2 else 2)
    assert all(os.path.isdir(parent) for parent in support.parents)


def test_bad_name_is_refused(support: CgroupSupport) -> None:
    with pytest.raises(ValueError, match="bad cgroup name"):
        WorkerCgroup.create(support, "../escape", ResourceLimits())


async def test_memory_hog_is_killed_by_cgroup(
    run_confined: RunConfined, policy: SandboxPolicy, new_cgroup: NewCgroup
) -> None:
    limits = dataclasses.replace(policy.limits, memory_bytes=64 * MIB)
    cgroup = new_cgroup("hog", limits)
    confined = dataclasses.replace(policy, limits=limits, cgroup_dirs=cgroup.dirs)
    outcome = await run_confined(confined, "alloc", str(200 * MIB))
    assert outcome.returncode == -signal.SIGKILL, outcome.stderr


async def test_pids_limit_caps_threads(
    run_confined: RunConfined, policy: SandboxPolicy, new_cgroup: NewCgroup
) -> None:
    limits = dataclasses.replace(policy.limits, pids=8, processes=None)
    cgroup = new_cgroup("pids", limits)
    confined = dataclasses.replace(policy, limits=limits, cgroup_dirs=cgroup.dirs)
    outcome = await run_confined(confined, "threads", "16")
    assert outcome.refused(), outcome.attempt
    assert (await run_confined(confined, "threads", "4")).attempt["ok"]


def _wait_until_member(cgroup: WorkerCgroup, pid: int) -> None:
    while pid not in cgroup.pids():
        time.sleep(0.005)


async def test_remove_kills_what_is_left(policy: SandboxPolicy, new_cgroup: NewCgroup) -> None:
    cgroup = new_cgroup("leftover", policy.limits)
    launch = build_launch(
        dataclasses.replace(policy, cgroup_dirs=cgroup.dirs), "attempt", ["sleep", "30"]
    )
    process = await asyncio.create_subprocess_exec(
        *launch.argv, env=dict(launch.env), cwd=launch.cwd, start_new_session=True,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(10):
            await asyncio.to_thread(_wait_until_member, cgroup, process.pid)
            await asyncio.to_thread(cgroup.remove)
            assert await process.wait() == -signal.SIGKILL
        assert cgroup.pids() == set()
        assert not any(map(os.path.exists, cgroup.dirs))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
