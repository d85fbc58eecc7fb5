"""The host's view of a worker forked by the fork-server: its pipes, its pidfd and its exit status.

`ForkedProcess` stands in for `asyncio.subprocess.Process`; `WorkerPipes` makes the three pipes
and their asyncio streams. `sandbox.forkserver` owns the control channel that reports exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from typing import Any, Final

PIPE_BYTES: Final = 1024 * 1024  # F_SETPIPE_SZ for the RPC pipes: fewer wake-ups for big frames
READ_CHUNK_BYTES: Final = 64 * 1024  # asyncio's 256 KiB default costs an mmap per read
STREAM_LIMIT_BYTES: Final = 64 * 1024


class _StdinProtocol(asyncio.streams.FlowControlMixin):
    """Flow control for the worker's stdin, plus the close waiter `StreamWriter.wait_closed` needs.

    asyncio offers no public protocol for a bare write pipe; FlowControlMixin is what its own
    subprocess streams build on.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._closed: asyncio.Future[None] = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: object) -> asyncio.Future[None]:
        return self._closed


class _ReaderProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol whose pipe transport closes itself at EOF, on any event loop.

    asyncio's pipe transport closes at EOF anyway; uvloop's keeps the pipe open when the
    protocol asks to, as StreamReaderProtocol does for half-closed sockets.
    """

    def eof_received(self) -> bool:
        super().eof_received()
        return False


class WorkerPipes:
    """A worker's stdin, stdout and stderr: the host's ends as streams, the child's as raw fds."""

    def __init__(self) -> None:
        self.child_fds: list[int] = []  # stdin read end, stdout write end, stderr write end
        self._host_files: list[Any] = []  # files not yet owned by a transport
        self._transports: list[asyncio.BaseTransport] = []
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None

    @classmethod
    async def open(cls) -> WorkerPipes:
        """Create the three pipes and wrap the host's ends; raise OSError if that fails.

        On error or cancellation every descriptor created so far is closed.
        """
        pipes = cls()
        try:
            await pipes._open()
        except BaseException:
            pipes.close_child_ends()
            pipes.close_host_ends()
            raise
        return pipes

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        for index in range(3):
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            if index == 0:
                self.child_fds.append(read_fd)
                self._host_files.append(os.fdopen(write_fd, "wb", buffering=0))
            else:
                self.child_fds.append(write_fd)
                self._host_files.append(os.fdopen(read_fd, "rb", buffering=0))
            if index < 2:  # stderr carries log lines: the default 64 KiB is plenty
                _enlarge_pipe(read_fd)
        write_transport, protocol = await loop.connect_write_pipe(
            lambda: _StdinProtocol(loop), self._host_files[0]
        )
        self._transports.append(write_transport)
        self.stdin = asyncio.StreamWriter(write_transport, protocol, None, loop)
        self.stdout = await self._open_reader(loop, 1)
        self.stderr = await self._open_reader(loop, 2)
        self._host_files.clear()

    async def _open_reader(
        self, loop: asyncio.AbstractEventLoop, index: int
    ) -> asyncio.StreamReader:
        reader = asyncio.StreamReader(limit=STREAM_LIMIT_BYTES, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: _ReaderProtocol(reader, loop=loop), self._host_files[index]
        )
        self._transports.append(transport)
        if hasattr(transport, "max_size"):  # asyncio's pipe transport; uvloop reads well already
            transport.max_size = READ_CHUNK_BYTES
        return reader

    def close_child_ends(self) -> None:
        """Close the host's copies of the child's ends (idempotent)."""
        while self.child_fds:
            os.close(self.child_fds.pop())

    def close_host_ends(self) -> None:
        """Close the host's ends, streams and all (idempotent)."""
        for transport in self._transports:
            transport.close()
        for file in self._host_files:
            file.close()
        self._host_files.clear()


def _enlarge_pipe(fd: int) -> None:
    """Grow a pipe to PIPE_BYTES where the kernel permits; keep the default otherwise."""
    with contextlib.suppress(OSError):  # EPERM over pipe-max-size, EBUSY over the user's quota
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class ForkedProcess:
    """A worker forked by the fork-server, used like `asyncio.subprocess.Process`.

    The fork-server reaps it and reports its exit status; signals go through a pidfd, so a
    recycled pid is never hit. `wait()` resolves when the exit is reported, without waiting for
    the pipes to close.
    """

    def __init__(self, pid: int, pidfd: int, pipes: WorkerPipes) -> None:
        assert pipes.stdin is not None and pipes.stdout is not None and pipes.stderr is not None
        self._pid = pid
        self._pidfd: int | None = pidfd
        self._pipes = pipes
        self._stdin = pipes.stdin
        self._stdout = pipes.stdout
        self._stderr = pipes.stderr
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._is_watching_pidfd = False

    def __repr__(self) -> str:
        return f"<ForkedProcess {self._pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        """The worker's process id (in the host's pid namespace)."""
        return self._pid

    @property
    def stdin(self) -> asyncio.StreamWriter:
        """The worker's standard input."""
        return self._stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        """The worker's standard output, read 64 KiB at a time."""
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        """The worker's standard error."""
        return self._stderr

    @property
    def returncode(self) -> int | None:
        """The exit status once reported: negative for a signal, as in asyncio; else None."""
        if self._exit.done():
            return self._exit.result()
        return None

    async def wait(self) -> int:
        """Wait for the worker to exit and return its status; cancelling only stops waiting."""
        return await asyncio.shield(self._exit)

    def send_signal(self, sig: int, /) -> None:
        """Send `sig` to the worker; do nothing once it has exited."""
        if self._pidfd is None or self._exit.done():
            return
        with contextlib.suppress(ProcessLookupError):  # exited; the report is on its way
            signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def set_exited(self, returncode: int) -> None:
        """Record the exit status the fork-server reported (for `sandbox.forkserver`)."""
        if self._exit.done():
            return
        self._exit.set_result(returncode)
        self._close_pidfd()
        self._stdin.close()  # nothing can be written to a dead worker; asyncio closes it too

    def abandon(self) -> None:
        """Kill the worker and close the host's pipe ends: nobody will use it."""
        self.kill()
        self._pipes.close_host_ends()

    def orphan(self) -> None:
        """Resolve `wait()` once the worker is gone; call after the fork-server has exited.

        By then the worker has been reparented (and killed by PDEATHSIG). If the host is a
        child subreaper, the worker is now its child and is reaped here with its real status;
        otherwise init reaps it and the reported status is -SIGKILL.
        """
        if self._pidfd is None or self._is_watching_pidfd:
            return
        self.kill()
        self._is_watching_pidfd = True
        self._loop.add_reader(self._pidfd, self._on_orphan_exited)

    def _on_orphan_exited(self) -> None:
        assert self._pidfd is not None
        returncode = -signal.SIGKILL
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:  # not our child: init reaps it
            result = None
        if result is not None:
            exited = result.si_code == os.CLD_EXITED
            returncode = result.si_status if exited else -result.si_status
        self.set_exited(returncode)

    def _close_pidfd(self) -> None:
        if self._pidfd is None:
            return
        if self._is_watching_pidfd:
            self._loop.remove_reader(self._pidfd)
            self._is_watching_pidfd = False
        os.close(self._pidfd)
        self._pidfd = None
