"""How the host starts a worker process: the `Spawner` seam, cold starts and fork-server starts.

A spawner turns a `LaunchRequest` into a started process whose stdin/stdout are the RPC channel.
Confinement itself is applied inside the child by the sandbox's bootstrap; a spawner only decides
how the process comes to exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from protocol import enlarge_pipe, open_pipe_streams
from sandbox import SandboxPolicy, build_env, build_launch
from sandbox.forkserver import ForkServer, ForkServerError

WORKER_MODULE: Final = "plugins.sdk.worker"
# Imported by every worker that has them (the SDK runs its loop on uvloop): preloaded in the
# fork-server when installed, each warm start saves importing it (~15 ms) and its private pages.
OPTIONAL_PRELOAD: Final = ("uvloop",)
# Spawn requests in flight at the fork-server at once. It forks one after another, and a request's
# reply timeout runs while it waits in the fork-server's queue: 1,000 starts at once (a restart
# restoring 1,000 activations) timed out 138 of them. The rest wait here instead, for their turn.
SPAWNS_IN_FLIGHT: Final = 8
_log = logging.getLogger(__name__)


class WorkerProcess(Protocol):
    """What the host needs of a started worker process."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int, /) -> None: ...


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """What to run: an entry module with arguments, and the policy that confines it.

    `policy=None` runs the worker unconfined with exactly `env`: for tests and development only.
    With a policy, `env` is added to the sandbox's allow-listed environment.
    """

    entry_args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    policy: SandboxPolicy | None = None
    entry_module: str = WORKER_MODULE
    python: str = sys.executable


def unconfined(bundle_dir: str, env: Mapping[str, str] | None = None) -> LaunchRequest:
    """A request that runs the worker runtime for `bundle_dir` without any sandbox."""
    return LaunchRequest(entry_args=(bundle_dir,), env=dict(env or {"PATH": "/usr/bin:/bin"}))


@dataclass(slots=True)
class SpawnedWorker:
    """A started worker: its process, the channel streams, and its stderr."""

    process: WorkerProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stderr: asyncio.StreamReader


class Spawner(Protocol):
    """Start a worker for a `LaunchRequest`; raise OSError if it cannot be started."""

    async def spawn(self, request: LaunchRequest) -> SpawnedWorker: ...


class ColdSpawner:
    """Start every worker as a fresh interpreter, in its own session, under the bootstrap."""

    async def spawn(self, request: LaunchRequest) -> SpawnedWorker:
        """Spawn the request's process; raise OSError if it cannot be executed."""
        if request.policy is None:
            argv: Sequence[str] = (request.python, "-m", request.entry_module, *request.entry_args)
            env, cwd = dict(request.env), None
        else:
            launch = build_launch(
                request.policy,
                request.entry_module,
                request.entry_args,
                python=request.python,
                extra_env=request.env,
            )
            argv, env, cwd = launch.argv, dict(launch.env), launch.cwd
        return await _spawn_exec(argv, env, cwd)


class OwnChild:
    """A worker we spawned ourselves, signalled through a pidfd.

    `asyncio.subprocess.Process.send_signal` goes through `Popen.send_signal`, which polls (reaps)
    the child first and so races asyncio's child watcher (which then reports status 255). A
    pidfd signal never reaps and can never reach a reused pid.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._pidfd: int | None
        try:
            self._pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:  # it exited and was reaped already
            self._pidfd = None

    @property
    def pid(self) -> int:
        """The worker's pid (and process group id: it leads its own session)."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: the signal that killed it)."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the worker to exit and be reaped; return its status."""
        status = await self._process.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return status

    def send_signal(self, sig: int, /) -> None:
        """Signal the worker; raise ProcessLookupError once it has been reaped."""
        if self._pidfd is None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, sig)

    def signal_group(self, sig: int) -> None:
        """Signal the worker's whole process group, while its pid is still ours."""
        self.send_signal(0)  # raises once reaped: the group id could then be reused
        os.killpg(self.pid, sig)


async def _spawn_exec(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | None
) -> SpawnedWorker:
    child_in, host_out = os.pipe2(os.O_CLOEXEC)
    host_in, child_out = os.pipe2(os.O_CLOEXEC)
    for fd in (host_out, host_in):
        enlarge_pipe(fd)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=child_in,
            stdout=child_out,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        for fd in (child_in, host_out, host_in, child_out):
            os.close(fd)
        raise
    os.close(child_in)
    os.close(child_out)
    reader, writer = await open_pipe_streams(host_in, host_out)
    assert process.stderr is not None  # stderr=PIPE
    return SpawnedWorker(OwnChild(process), reader, writer, process.stderr)


def default_preload() -> tuple[str, ...]:
    """The fork-server's preload: the worker runtime, plus each installed `OPTIONAL_PRELOAD`.

    The fork-server imports from this interpreter's site-packages (`default_sys_path`), so
    what this process can find, it can import.
    """
    present = (name for name in OPTIONAL_PRELOAD if importlib.util.find_spec(name) is not None)
    return (WORKER_MODULE, *present)


class ForkServerSpawner:
    """Fork confined workers from a preloaded fork-server; cold-start while it is down.

    The fork-server is started on first use and restarted (at most once per
    `restart_interval_s`) after it dies; meanwhile, and for unconfined requests, workers are
    started cold. Call `close()` to stop it.
    """

    def __init__(
        self,
        *,
        sys_path: Sequence[str],
        preload: Sequence[str] | None = None,
        restart_interval_s: float = 5.0,
        spawns_in_flight: int = SPAWNS_IN_FLIGHT,
    ) -> None:
        self._sys_path = tuple(sys_path)
        # A wait here ends: each holder's request is bounded by the fork-server's reply timeout.
        self._in_flight = asyncio.Semaphore(spawns_in_flight)
        self._preload = tuple(preload) if preload is not None else default_preload()
        self._restart_interval_s = restart_interval_s
        self._cold = ColdSpawner()
        self._server: ForkServer | None = None
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def server(self) -> ForkServer | None:
        """The running fork-server, if any."""
        return self._server

    async def spawn(self, request: LaunchRequest) -> SpawnedWorker:
        """Fork the worker, or start it cold if there is no fork-server to fork it."""
        server = await self._running() if request.policy is not None else None
        if server is None or request.policy is None:
            return await self._cold.spawn(request)
        policy = request.policy
        env = build_env(policy.scratch_dir, request.env)
        try:
            async with self._in_flight:
                process = await server.spawn(
                    policy, request.entry_module, request.entry_args, env, policy.scratch_dir
                )
        except ForkServerError as exc:
            if server.is_alive:
                raise OSError(f"fork-server refused the spawn: {exc}") from exc
            _log.warning("fork-server died (%s); starting this worker cold", exc)
            return await self._cold.spawn(request)
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        return SpawnedWorker(process, process.stdout, process.stdin, process.stderr)

    async def _running(self) -> ForkServer | None:
        async with self._lock:
            if self._server is not None and self._server.is_alive:
                return self._server
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_attempt < self._restart_interval_s:
                return None
            self._last_attempt = loop.time()
            if self._server is not None:
                _log.warning("fork-server is gone; restarting it")
                with contextlib.suppress(ForkServerError):
                    await self._server.close(timeout_s=1.0)
            try:
                self._server = await ForkServer.start(
                    preload=self._preload, sys_path=self._sys_path
                )
            except ForkServerError as exc:
                _log.error("cannot start the fork-server: %s; workers start cold", exc)
                self._server = None
            return self._server

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the fork-server (its remaining workers die with it)."""
        async with self._lock:
            if self._server is not None:
                await self._server.close(timeout_s)
                self._server = None
