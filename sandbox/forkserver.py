"""The host side of the fork-server: start it, ask it for workers, and learn when they exit.

A fork-server is a long-lived child of the host that has preloaded the worker runtime and frozen
its heap; forking a worker from it costs milliseconds instead of an interpreter start. The
process itself is `sandbox.forkserver_server`; the worker's set-up is `sandbox.forkserver_child`.

Failure model: the fork-server gets PDEATHSIG=SIGKILL against the host, and each worker gets it
against the fork-server, so a SIGKILLed host takes the whole tree with it. If the fork-server
dies, this object does not restart it: pending spawns fail with `ForkServerError`, every worker
it owned is killed (PDEATHSIG already did) and its `wait()` resolves once it is gone, and
`is_alive` turns False. The caller then starts a new `ForkServer` and meanwhile falls back to
cold starts. The orphaned workers are reparented to the nearest child subreaper: if that is
the host, they are reaped here with their real status; otherwise init reaps them (it must: an
init that does not leaves zombies) and `wait()` reports -SIGKILL, the status PDEATHSIG gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sandbox.errors import SandboxError
from sandbox.forkserver_boot import LaunchedServer, launch
from sandbox.forkserver_process import ForkedProcess, WorkerPipes
from sandbox.forkserver_wire import (
    ANCILLARY_BYTES,
    MAX_MESSAGE_BYTES,
    decode,
    encode,
    received_fds,
    rights,
)
from sandbox.policy import SandboxPolicy

__all__ = ["ForkServer", "ForkServerError", "ForkedProcess", "WorkerProcess"]

_log = logging.getLogger(__name__)


class ForkServerError(SandboxError):
    """The fork-server is gone, did not start, or could not fork a worker; cold-start instead."""


class WorkerProcess(Protocol):
    """What the host uses of a worker process: `asyncio.subprocess.Process` or `ForkedProcess`."""

    @property
    def pid(self) -> int: ...

    @property
    def stdin(self) -> asyncio.StreamWriter | None: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int, /) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


@dataclass(slots=True)
class _PendingSpawn:
    """A spawn request awaiting the fork-server's reply."""

    reply: asyncio.Future[ForkedProcess]
    pipes: WorkerPipes


class ForkServer:
    """A running fork-server; create it with `start`, stop it with `close`."""

    def __init__(
        self, launched: LaunchedServer, control: socket.socket, request_timeout_s: float
    ) -> None:
        """Adopt a launched fork-server and the host's end of its control socket; use `start`."""
        self._process = launched.process
        self._pidfd: int | None = launched.pidfd
        self._stderr = launched.stderr
        self._stderr_closed = launched.stderr_closed
        self._control = control
        self._request_timeout_s = request_timeout_s
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[int] = self._loop.create_future()
        self._ids = itertools.count(1)
        self._pending: dict[int, _PendingSpawn] = {}
        self._workers: dict[int, ForkedProcess] = {}
        self._send_lock = asyncio.Lock()
        self._lost_reason: str | None = None
        self._loop.add_reader(control.fileno(), self._on_readable)

    @classmethod
    async def start(
        cls,
        *,
        preload: Sequence[str],
        sys_path: Sequence[str],
        python: str = sys.executable,
        start_timeout_s: float = 10.0,
        request_timeout_s: float = 5.0,
    ) -> ForkServer:
        """Start a fork-server that has imported `preload`; return once it is ready to fork.

        `sys_path` is its sys.path (the interpreter runs with -I -S); the directory holding
        the `sandbox` package is appended when missing. Call it from the event-loop thread:
        the fork-server's PDEATHSIG fires when the thread that spawned it exits. Raises
        ForkServerError if it cannot start, a preload import fails or starts a thread, or it
        is not ready within `start_timeout_s`; on cancellation the half-started process is
        killed and reaped.
        """
        host_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            launched = await launch(
                python=python, preload=preload, sys_path=sys_path, control_fd=server_end.fileno()
            )
        except BaseException as exc:
            host_end.close()
            if isinstance(exc, OSError):
                raise ForkServerError(f"cannot start a fork-server with {python}: {exc}") from exc
            raise
        finally:
            server_end.close()
        host_end.setblocking(False)
        server = cls(launched, host_end, request_timeout_s)
        try:
            async with asyncio.timeout(start_timeout_s):
                await server._ready
        except BaseException as exc:
            await server._kill(start_timeout_s)
            if isinstance(exc, TimeoutError):
                raise ForkServerError(f"not ready within {start_timeout_s} s") from exc
            raise
        return server

    @property
    def pid(self) -> int:
        """The fork-server's process id."""
        return self._process.pid

    @property
    def is_alive(self) -> bool:
        """Whether the fork-server can still fork workers."""
        return self._lost_reason is None and self._process.returncode is None

    async def spawn(
        self,
        policy: SandboxPolicy,
        entry_module: str,
        entry_args: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
    ) -> ForkedProcess:
        """Fork a worker that confines itself with `policy`, then runs `entry_module` as __main__.

        `env` becomes its whole environment and `cwd` its working directory. The worker
        applies the layers itself after the fork and reports a refusal as the cold bootstrap
        does: a JSON line on its stderr and exit status 78 (70 if set-up failed).
        Raises ForkServerError if the fork-server is gone, refuses, or does not answer within
        the request timeout. On cancellation nothing is left behind: a worker forked anyway
        is killed and its pipes are closed.
        """
        if not self.is_alive:
            raise ForkServerError(f"fork-server is not running: {self._lost_reason}")
        request_id = next(self._ids)
        message = {
            "op": "spawn",
            "id": request_id,
            "policy": policy.to_json(),
            "entry": entry_module,
            "args": list(entry_args),
            "env": dict(env),
            "cwd": cwd,
        }
        try:
            data = encode(message)
        except ValueError as exc:
            raise ForkServerError(str(exc)) from exc
        try:
            pipes = await WorkerPipes.open()
        except OSError as exc:
            raise ForkServerError(f"cannot create the worker's pipes: {exc}") from exc
        pending = _PendingSpawn(self._loop.create_future(), pipes)
        self._pending[request_id] = pending
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await self._send(data, pipes.child_fds)
                return await pending.reply
        except BaseException as exc:
            self._abandon(request_id, pending)
            if isinstance(exc, TimeoutError):
                raise ForkServerError(f"no reply within {self._request_timeout_s} s") from exc
            raise
        finally:
            pipes.close_child_ends()

    async def close(self, timeout_s: float) -> None:
        """Stop the fork-server, killing every worker it still runs; idempotent.

        Asks it to shut down, then SIGKILLs it after `timeout_s`. Every worker's `wait()`
        resolves. On cancellation the fork-server is killed before the error propagates.
        """
        try:
            if self.is_alive:
                with contextlib.suppress(ForkServerError, TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await self._send(encode({"op": "shutdown"}), [])
                        await self._process.wait()
        finally:
            await self._kill(timeout_s)

    async def _kill(self, timeout_s: float) -> None:
        """SIGKILL the fork-server if it still runs, reap it, and settle everything it owned."""
        try:
            if self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._process.wait()
                except TimeoutError as exc:
                    raise ForkServerError(f"fork-server {self.pid} survived SIGKILL") from exc
        finally:
            self._on_readable()  # collect exit reports already queued
            self._lose("fork-server was closed")
            if self._process.returncode is not None:
                self._settle_orphans()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await asyncio.shield(self._stderr_closed)  # relay its last words
            self._stderr.close()

    async def _send(self, data: bytes, fds: list[int]) -> None:
        """Send one encoded message, waiting while the socket buffer is full."""
        async with self._send_lock:
            while True:
                if self._lost_reason is not None:
                    raise ForkServerError(f"fork-server is not running: {self._lost_reason}")
                try:
                    self._control.sendmsg([data], rights(fds))
                    return
                except BlockingIOError:
                    await self._writable()
                except OSError as exc:
                    self._lose(f"control channel failed: {exc}")

    async def _writable(self) -> None:
        """Wait until the control socket accepts a message."""
        writable: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not writable.done():
                writable.set_result(None)

        fd = self._control.fileno()
        self._loop.add_writer(fd, wake)
        try:
            await writable
        finally:
            self._loop.remove_writer(fd)

    def _on_readable(self) -> None:
        """Read and dispatch every message queued on the control socket."""
        while self._lost_reason is None:
            try:
                data, ancdata, flags, _ = self._control.recvmsg(
                    MAX_MESSAGE_BYTES, ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(f"control channel failed: {exc}")
                return
            fds = received_fds(ancdata)
            try:
                if not data:
                    self._lose(f"fork-server {self.pid} exited")
                    return
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise ValueError("truncated control message")
                self._dispatch(decode(data), fds)
            except (ValueError, KeyError, TypeError):
                _log.error("fork-server %d sent a bad message", self.pid, exc_info=True)
            finally:
                _close_all(fds)  # those the message did not hand over

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        """Act on one message from the fork-server; removes from `fds` those it takes."""
        op = message["op"]
        if op == "spawned":
            self._on_spawned(int(message["id"]), int(message["pid"]), fds)
        elif op == "exited":
            worker = self._workers.pop(int(message["pid"]), None)
            if worker is not None:
                worker.set_exited(int(message["returncode"]))
        elif op == "failed":
            pending = self._pending.pop(int(message["id"]), None)
            if pending is not None and not pending.reply.done():
                error = ForkServerError(f"fork-server could not fork: {message['error']}")
                pending.reply.set_exception(error)
        elif op == "ready":
            if not self._ready.done():
                self._ready.set_result(int(message["pid"]))
        elif op == "fatal":
            if not self._ready.done():
                self._ready.set_exception(ForkServerError(f"start failed: {message['error']}"))
        else:
            raise ValueError(f"unknown op {op!r}")

    def _on_spawned(self, request_id: int, pid: int, fds: list[int]) -> None:
        """Adopt a forked worker and its pidfd, or kill it when its spawn was abandoned."""
        if len(fds) != 1:
            raise ValueError(f"spawned {pid} with {len(fds)} fds instead of a pidfd")
        pidfd = fds.pop()
        pending = self._pending.pop(request_id, None)
        if pending is None:  # the caller gave up: nobody will use this worker
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
            return
        worker = ForkedProcess(pid, pidfd, pending.pipes)
        self._workers[pid] = worker
        if pending.reply.done():  # cancelled a moment ago; its caller is on the way out
            worker.abandon()
        else:
            pending.reply.set_result(worker)

    def _abandon(self, request_id: int, pending: _PendingSpawn) -> None:
        """Forget a spawn whose caller gave up; kill its worker if it was already forked."""
        self._pending.pop(request_id, None)
        reply = pending.reply
        if reply.done() and not reply.cancelled() and reply.exception() is None:
            reply.result().abandon()
        else:
            reply.cancel()
            pending.pipes.close_host_ends()

    def _lose(self, reason: str) -> None:
        """Mark the fork-server gone: fail pending spawns and settle its workers (idempotent)."""
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        self._loop.remove_reader(self._control.fileno())
        self._control.close()
        error = ForkServerError(f"fork-server is not running: {reason}")
        if not self._ready.done():
            self._ready.set_exception(error)
        for pending in self._pending.values():
            if not pending.reply.done():
                pending.reply.set_exception(error)
        self._pending.clear()
        for worker in self._workers.values():
            worker.kill()  # PDEATHSIG does it too; this covers a worker still setting up
        if self._pidfd is not None:
            self._loop.add_reader(self._pidfd, self._settle_orphans)

    def _settle_orphans(self) -> None:
        """Once the fork-server has exited, resolve the waits of the workers it left (idempotent).

        The control channel closes early in the fork-server's exit, before the kernel
        reparents its children; only its exit (the pidfd turning readable) says they have
        been, so each worker's parent is final when it is reaped or found not to be ours.
        """
        if self._pidfd is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        for worker in self._workers.values():
            worker.orphan()
        self._workers.clear()


def _close_all(fds: list[int]) -> None:
    """Close every descriptor in `fds`."""
    for fd in fds:
        os.close(fd)


if TYPE_CHECKING:  # mypy proves here that both process types satisfy WorkerProcess
    _ASYNCIO_PROCESS: type[WorkerProcess] = asyncio.subprocess.Process
    _FORKED_PROCESS: type[WorkerProcess] = ForkedProcess
