"""The bootstrap as the host runs it: strict refusals, permissive warnings, argv, fds, stdout."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys

import pytest

from sandbox import BOOTSTRAP_PATH, EXIT_REFUSED, Layer, Mode, SandboxPolicy, build_launch

from .conftest import RunConfined

pytestmark = pytest.mark.integration

MISSING_CGROUP = "/sys/fs/cgroup/memory/corral-no-such-cgroup"


async def test_strict_mode_refuses_an_impossible_layer(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    impossible = dataclasses.replace(policy, cgroup_dirs=(MISSING_CGROUP,), mode=Mode.STRICT)
    outcome = await run_confined(impossible, "identity")
    assert outcome.returncode == EXIT_REFUSED == 78
    [refusal] = outcome.events_named("sandbox_refused")
    assert refusal["level"] == "error"
    assert refusal["layer"] == Layer.CGROUP
    assert MISSING_CGROUP in refusal["reason"]
    assert not outcome.events_named("attempt")  # the plugin never ran


async def test_permissive_mode_warns_and_runs(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    lenient = dataclasses.replace(policy, cgroup_dirs=(MISSING_CGROUP,), mode=Mode.PERMISSIVE)
    outcome = await run_confined(lenient, "identity")
    assert outcome.returncode == 0
    [warning] = outcome.events_named("sandbox_layer_missing")
    assert warning["level"] == "warning"
    assert warning["layer"] == Layer.CGROUP
    assert outcome.attempt["ok"]


async def test_worker_whose_host_is_not_its_parent_exits(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    outcome = await run_confined(dataclasses.replace(policy, host_pid=1), "identity")
    assert outcome.returncode == EXIT_REFUSED
    [refusal] = outcome.events_named("sandbox_refused")
    assert "expected host pid 1" in refusal["reason"]


async def test_entry_module_gets_its_name_and_args_as_argv(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    outcome = await run_confined(policy, "identity")
    assert outcome.attempt["argv0"] == "attempt"
    assert outcome.events_named("sandbox_refused") == []


async def test_inherited_fds_are_closed(run_confined: RunConfined, policy: SandboxPolicy) -> None:
    read_end, write_end = os.pipe()
    try:
        outcome = await run_confined(policy, "fd_open", str(write_end), pass_fds=(write_end,))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert outcome.attempt["detail"] is False, outcome.attempt


@pytest.mark.parametrize(
    "argv", [["not json", "attempt"], ["{}", "attempt"], []], ids=["junk", "empty", "none"]
)
async def test_bad_invocation_is_refused(argv: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-B", BOOTSTRAP_PATH, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={},
    )  # fmt: skip
    async with asyncio.timeout(10):
        stdout, stderr = await process.communicate()
    assert process.returncode == EXIT_REFUSED
    assert stdout == b""
    assert json.loads(stderr.decode().splitlines()[-1])["event"] == "sandbox_refused"


def test_launch_runs_bootstrap_isolated(policy: SandboxPolicy) -> None:
    launch = build_launch(policy, "attempt", ["a", "b"], python="/usr/bin/python3")
    assert launch.argv[:5] == ("/usr/bin/python3", "-I", "-S", "-B", BOOTSTRAP_PATH)
    assert launch.argv[-3:] == ("attempt", "a", "b")
    assert SandboxPolicy.from_json(launch.argv[5]).host_pid == os.getpid()
    assert launch.cwd == policy.scratch_dir


def test_launch_refuses_bad_entry_module(policy: SandboxPolicy) -> None:
    with pytest.raises(ValueError, match="bad entry module"):
        build_launch(policy, "attempt; rm -rf /")
