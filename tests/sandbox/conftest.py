"""Shared fixtures for the sandbox tests: a kernel report, uids, scratch dirs, confined runs.

Every confined run is a real child started through `build_launch` and the bootstrap, running
`fixtures/attempt.py`, which tries one action and reports the outcome as a JSON line on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pytest

from sandbox import (
    DEFAULT_READ_WRITE_PATHS,
    Layer,
    SandboxPolicy,
    SandboxReport,
    UidPool,
    build_launch,
    create_scratch,
    default_read_only_paths,
    default_sys_path,
    probe,
    remove_scratch,
)

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).parents[2]
RUN_TIMEOUT_S = 20.0
TEST_UIDS = UidPool(62000, 62999)  # apart from the host's default pool, which others may use


@dataclass
class Outcome:
    """What a confined child did: exit status, stderr events and the attempt's own report."""

    returncode: int
    stdout: bytes
    stderr: str
    elapsed_s: float
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def attempt(self) -> dict[str, Any]:
        """The attempt's report; fails the test when the child never got to write it."""
        reports = [e for e in self.events if e.get("event") == "attempt"]
        assert reports, f"no attempt report (exit {self.returncode}):\n{self.stderr}"
        return reports[-1]

    def refused(self, *errnos: int) -> bool:
        """Return whether the action failed, with one of `errnos` when given."""
        report = self.attempt
        return not report["ok"] and (not errnos or report["errno"] in errnos)

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


class RunConfined(Protocol):
    def __call__(
        self, policy: SandboxPolicy, *args: str, pass_fds: tuple[int, ...] = ()
    ) -> Awaitable[Outcome]: ...


def _parse_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(line)
            if isinstance(value, dict):
                events.append(value)
    return events


@pytest.fixture(scope="session")
def kernel_report() -> SandboxReport:
    """The probe's report for this machine, computed once."""
    return probe()


def require(report: SandboxReport, *layers: Layer) -> None:
    """Skip when the probe says a layer is missing; when it says present, the test must pass."""
    for layer in layers:
        status = report.status(layer)
        if not status.available:
            pytest.skip(f"{layer} unavailable on this machine: {status.reason}")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to a worker uid")


@pytest.fixture(scope="session")
def scratch_root() -> Iterator[Path]:
    """A 0711 directory under /tmp for scratch dirs: reachable by worker uids, not listable."""
    root = Path(tempfile.mkdtemp(prefix="corral-sandbox-tests-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def worker_uid() -> Iterator[int]:
    uid = TEST_UIDS.allocate()
    yield uid
    TEST_UIDS.release(uid)


@pytest.fixture
def scratch(scratch_root: Path, worker_uid: int, request: pytest.FixtureRequest) -> Iterator[Path]:
    """This test's scratch directory, owned by its worker uid."""
    name = f"{request.node.name[:40]}-{os.getpid()}-{time.monotonic_ns()}"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    owner = worker_uid if os.geteuid() == 0 else None
    path = Path(create_scratch(str(scratch_root), name, uid=owner, gid=owner))
    yield path
    remove_scratch(str(path))


@pytest.fixture
def policy(scratch: Path, worker_uid: int) -> SandboxPolicy:
    """Every layer on, as an unprivileged uid when the tests run as root."""
    return SandboxPolicy(
        scratch_dir=str(scratch),
        sys_path=default_sys_path(str(FIXTURES), str(REPO_ROOT)),
        read_only_paths=default_read_only_paths(
            str(FIXTURES), str(REPO_ROOT / "protocol"), str(REPO_ROOT / "plugins")
        ),
        read_write_paths=DEFAULT_READ_WRITE_PATHS,
        uid=worker_uid if os.geteuid() == 0 else None,
        gid=worker_uid if os.geteuid() == 0 else None,
    )


def only(policy: SandboxPolicy, *layers: Layer) -> SandboxPolicy:
    """Return `policy` with just `layers` among credentials, namespaces, Landlock and seccomp."""
    return replace(
        policy,
        uid=policy.uid if Layer.CREDENTIALS in layers else None,
        gid=policy.gid if Layer.CREDENTIALS in layers else None,
        isolate_network=Layer.NAMESPACES in layers,
        landlock=Layer.LANDLOCK in layers,
        seccomp=Layer.SECCOMP in layers,
    )


@pytest.fixture
async def run_confined() -> AsyncIterator[RunConfined]:
    """Start `attempt.py <args>` under `policy` the way the host does; return its Outcome."""
    processes: list[asyncio.subprocess.Process] = []

    async def run(policy: SandboxPolicy, *args: str, pass_fds: tuple[int, ...] = ()) -> Outcome:
        launch = build_launch(policy, "attempt", args)
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *launch.argv,
            env=dict(launch.env),
            cwd=launch.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
        )
        processes.append(process)
        async with asyncio.timeout(RUN_TIMEOUT_S):
            stdout, stderr = await process.communicate()
        text = stderr.decode(errors="replace")
        assert process.returncode is not None
        outcome = Outcome(process.returncode, stdout, text, time.monotonic() - started)
        outcome.events = _parse_events(text)
        assert stdout == b"", "the sandbox must never write to fd 1"
        return outcome

    yield run
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


RunFactory = Callable[..., Awaitable[Outcome]]
