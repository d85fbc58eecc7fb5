"""The reliability suite's tools: a real `corral serve` in a process of its own, and tallies.

`served()` starts `python -m runner.cli serve` on a free loopback port over a state directory
(fresh, or one a previous run left behind), waits until `/readyz` answers 200 and yields a
`Served` handle; it stops the process at the end (SIGTERM, then SIGKILL) and checks that no
process of that run is left. Tests SIGKILL it themselves when that is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
GONE_TIMEOUT_S = 5.0
# Budgets high enough that the floods reach the paths they aim at instead of the rate limits
# (the limits are tested elsewhere); failed authentication keeps its default on purpose.
SERVE_ENV = {
    "CORRAL_AUDIT_FSYNC": "false",
    "CORRAL_WEBHOOK_RATE_PER_MINUTE": "100000000",
    "CORRAL_RATE_READS_PER_MINUTE": "100000000",
    "CORRAL_RATE_WRITES_PER_MINUTE": "100000000",
}


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_state_dir() -> Path:
    """A state directory worker uids can traverse (pytest's tmp_path sits under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="corral-rel-", dir="/tmp"))
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class ProcessMark:
    """A process as it was seen: its pid and start time (a reused pid has another)."""

    pid: int
    created: float

    def is_alive(self) -> bool:
        """Whether this very process still runs (a zombie waiting for its reaper does not)."""
        try:
            process = psutil.Process(self.pid)
            return (
                process.create_time() == self.created and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def descendants(pid: int) -> list[ProcessMark]:
    """Every process below `pid` (fork-server, workers), marked with its start time."""
    marks = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                marks.append(ProcessMark(child.pid, child.create_time()))
    return marks


async def wait_all_gone(
    marks: Iterable[ProcessMark], timeout_s: float = GONE_TIMEOUT_S
) -> list[int]:
    """Wait (bounded) until none of `marks` runs; return the pids still running then."""
    marks = list(marks)
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [m.pid for m in await asyncio.to_thread(lambda: [m for m in marks if m.is_alive()])]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.05)


@dataclass
class Served:
    """A running `corral serve`: its process, URL, state directory and bootstrap key."""

    process: asyncio.subprocess.Process
    base: str
    state: Path
    key: str
    log: Path
    run_marks: list[ProcessMark] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The host process's pid."""
        return self.process.pid

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this host."""
        return self.base + path

    def rss_bytes(self) -> int:
        """The host process's resident memory (workers are not counted: they are confined)."""
        return int(psutil.Process(self.pid).memory_info().rss)

    async def kill(self) -> None:
        """SIGKILL the host (nothing of it runs on) and reap it."""
        self.run_marks = descendants(self.pid)
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


async def _wait_ready(process: asyncio.subprocess.Process, base: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(base + "/readyz", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    tail = await asyncio.to_thread(lambda: log.read_text(errors="replace")[-3000:])
    raise AssertionError(f"corral serve did not become ready (exit {process.returncode}):\n{tail}")


@asynccontextmanager
async def served(
    state: Path | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[Served]:
    """Run `corral serve` over `state` (a fresh directory when None) until the block ends."""
    own_state = state is None
    state = state or new_state_dir()
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    environ.update(SERVE_ENV)
    environ["CORRAL_CONFIG_PATH"] = str(state / "config" / "corral.config.json")
    environ.update(env or {})
    log = state / f"serve-{port}.log"
    with log.open("wb") as sink:  # a file, not a pipe: nobody has to drain it under a flood
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runner.cli",
            "serve",
            "--port",
            str(port),
            "--state-dir",
            str(state),
            env=environ,
            cwd=str(REPO),
            stdout=sink,
            stderr=sink,
        )
    base = f"http://127.0.0.1:{port}"
    handle: Served | None = None
    try:
        await _wait_ready(process, base, log)
        key = (state / "bootstrap-key").read_text().strip()
        handle = Served(process, base, state, key, log)
        yield handle
    finally:
        marks = descendants(process.pid) if process.returncode is None else []
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        left = await wait_all_gone(marks + (handle.run_marks if handle else []))
        if own_state:
            shutil.rmtree(state, ignore_errors=True)
        assert left == [], f"processes of corral serve outlived it: {left}"


class Tally:
    """Count answers by status (or by the name of the exception a request ended with)."""

    def __init__(self) -> None:
        self.counts: Counter[Any] = Counter()

    def add(self, outcome: Any) -> None:
        """Count one outcome."""
        self.counts[outcome] += 1

    @property
    def total(self) -> int:
        """How many outcomes were counted."""
        return sum(self.counts.values())

    def others(self, allowed: Iterable[Any]) -> dict[Any, int]:
        """The outcomes outside `allowed`, with their counts."""
        allowed = set(allowed)
        return {k: v for k, v in self.counts.items() if k not in allowed}

    def __repr__(self) -> str:
        return repr(dict(sorted(self.counts.items(), key=str)))


async def bounded(concurrency: int, jobs: Iterable[Any]) -> None:
    """Await the coroutines `jobs` with at most `concurrency` running at once."""
    iterator = iter(jobs)

    async def lane() -> None:
        for job in iterator:
            await job

    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(lane())
