"""System-call escapes from a real sandbox: exec, fork, ptrace, signals and the rest of the list."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from sandbox import Layer, SandboxPolicy, SandboxReport
from sandbox.seccomp import DENIED, build_filter

from .conftest import RunConfined, only, require

pytestmark = pytest.mark.integration


@pytest.fixture
def sibling() -> Iterator[int]:
    """Another process on the host (standing in for a sibling worker); yields its pid."""
    process = subprocess.Popen(["sleep", "30"])
    yield process.pid
    process.kill()
    process.wait()


def test_filter_refuses_unknown_architecture() -> None:
    with pytest.raises(Exception, match="no syscall table"):
        build_filter(os.getpid(), "s390x")


def test_filter_fits_classic_bpf_limits() -> None:
    program = build_filter(os.getpid())
    assert len(program) % 8 == 0
    assert len(program) // 8 < 4096
    assert "socket" in DENIED and "socketpair" not in DENIED


async def test_exec_of_shell_fails(run_confined: RunConfined, policy: SandboxPolicy) -> None:
    outcome = await run_confined(policy, "exec", "/bin/sh")
    assert outcome.refused(errno.EPERM), outcome.attempt


async def test_landlock_alone_refuses_exec(
    run_confined: RunConfined, policy: SandboxPolicy, kernel_report: SandboxReport
) -> None:
    require(kernel_report, Layer.LANDLOCK)
    outcome = await run_confined(only(policy, Layer.LANDLOCK), "exec", "/bin/sh")
    assert outcome.refused(errno.EACCES), outcome.attempt


async def test_fork_and_spawn_fail_but_threads_work(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    assert (await run_confined(policy, "fork")).refused(errno.EPERM)
    assert (await run_confined(policy, "spawn", "/bin/true")).refused(errno.EPERM)
    threads = await run_confined(policy, "threads", "4")
    assert threads.attempt == threads.attempt | {"ok": True, "detail": "4 threads"}


async def test_ptrace_of_sibling_fails(
    run_confined: RunConfined, policy: SandboxPolicy, kernel_report: SandboxReport, sibling: int
) -> None:
    outcome = await run_confined(policy, "ptrace", str(sibling))
    assert outcome.refused(errno.EPERM), outcome.attempt
    for layer in (Layer.SECCOMP, Layer.LANDLOCK):
        require(kernel_report, layer)
        alone = await run_confined(only(policy, layer), "ptrace", str(sibling))
        assert alone.refused(errno.EPERM), (layer, alone.attempt)


async def test_signalling_the_host_fails(
    run_confined: RunConfined, policy: SandboxPolicy, kernel_report: SandboxReport
) -> None:
    # SIGWINCH is ignored by default: harmless should the sandbox ever let it through.
    host = str(os.getpid())
    outcome = await run_confined(policy, "kill", host, str(int(signal.SIGWINCH)))
    assert outcome.refused(errno.EPERM), outcome.attempt
    require(kernel_report, Layer.SECCOMP)
    seccomp_only = await run_confined(only(policy, Layer.SECCOMP), "kill", host, "0")
    assert seccomp_only.refused(errno.EPERM), seccomp_only.attempt
    if kernel_report.landlock_abi >= 6:
        landlock_only = await run_confined(only(policy, Layer.LANDLOCK), "kill", host, "0")
        assert landlock_only.refused(errno.EPERM), landlock_only.attempt


async def test_worker_can_signal_itself(run_confined: RunConfined, policy: SandboxPolicy) -> None:
    outcome = await run_confined(policy, "kill_self")
    assert outcome.attempt["detail"] == "received 2", outcome.attempt


async def test_dangerous_syscalls_are_refused(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    names = (
        "bpf", "perf_event_open", "keyctl", "add_key", "io_uring_setup", "kexec_load",
        "init_module", "unshare", "setns", "mount", "chroot", "process_vm_readv", "pidfd_open",
        "userfaultfd", "reboot", "swapon", "clone3",
    )  # fmt: skip
    outcome = await run_confined(policy, "syscalls", *names)
    expected = {name: errno.EPERM for name in names} | {"clone3": errno.ENOSYS}
    assert outcome.attempt["detail"] == expected


async def test_parent_death_signal_cannot_be_cleared(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    outcome = await run_confined(policy, "clear_pdeathsig")
    assert outcome.refused(errno.EPERM), outcome.attempt
