"""Starting the fork-server process from the host: its command line, environment and stdio.

`launch` runs `sandbox.forkserver_server.main` under `python -I -S` and relays its stderr to the
host's log, line by line; `sandbox.forkserver.ForkServer` owns the process from then on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sandbox.environment import BASE_ENV

_log = logging.getLogger("sandbox.forkserver")

PACKAGE_ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINE_BYTES: Final = 64 * 1024
# Runs in the fork-server before anything else: sys.path first, and no collection before
# gc.freeze(), since collecting would leave holes in pages the workers then fill.
_BOOT_CODE: Final = (
    "import gc, json, sys; gc.disable(); config = json.loads(sys.argv[1]); "
    "sys.path[:] = config['sys_path']; "
    "from sandbox.forkserver_server import main; sys.exit(main(config))"
)
# The fork-server's own environment: glibc (MALLOC_ARENA_MAX) and the locale read it at start,
# and workers inherit those settings; each worker's os.environ then comes from the host.
_SERVER_ENV: Final = dict(BASE_ENV)


class _StderrRelay(asyncio.Protocol):
    """Re-log what the fork-server writes to stderr, one warning per line, under its pid."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = 0
        self.closed: asyncio.Future[None] = loop.create_future()
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._emit(line)
        if len(self._partial) > MAX_LINE_BYTES:
            self._emit(self._partial)
            self._partial = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self._emit(self._partial)
        if not self.closed.done():
            self.closed.set_result(None)

    def _emit(self, line: bytes) -> None:
        _log.warning("fork-server %d: %s", self.pid, line.decode(errors="replace"))


@dataclass(frozen=True, slots=True)
class LaunchedServer:
    """A fork-server process just started, before it has said it is ready."""

    process: asyncio.subprocess.Process
    pidfd: int
    stderr: asyncio.ReadTransport
    stderr_closed: asyncio.Future[None]  # resolves once its stderr has been read to the end


async def launch(
    *, python: str, preload: Sequence[str], sys_path: Sequence[str], control_fd: int
) -> LaunchedServer:
    """Start a fork-server that talks over `control_fd`; raise OSError if it cannot start.

    `sys_path` gets the directory holding `sandbox` appended when missing. On error or
    cancellation every descriptor opened here is closed and a started process is reaped.
    """
    loop = asyncio.get_running_loop()
    path = [*sys_path, *([] if PACKAGE_ROOT in sys_path else [PACKAGE_ROOT])]
    config = {"control_fd": control_fd, "host_pid": os.getpid(), "sys_path": path}
    config["preload"] = list(preload)
    # Pipes, not /dev/null, with the far ends of stdin and stdout closed: every worker keeps
    # the sys.stdin/stdout/stderr the interpreter builds over these at start-up, and objects
    # built over a seekable file would behave unlike a cold worker's over its pipes.
    stdin_fd, unused_writer = os.pipe2(os.O_CLOEXEC)
    unused_reader, stdout_fd = os.pipe2(os.O_CLOEXEC)
    relay_fd, stderr_fd = os.pipe2(os.O_CLOEXEC)
    _close_all([unused_writer, unused_reader])
    relay_file = os.fdopen(relay_fd, "rb", buffering=0)
    try:
        transport, relay = await loop.connect_read_pipe(lambda: _StderrRelay(loop), relay_file)
        try:
            process = await asyncio.create_subprocess_exec(
                *(python, "-I", "-S", "-c", _BOOT_CODE, json.dumps(config)),
                stdin=stdin_fd,
                stdout=stdout_fd,
                stderr=stderr_fd,
                pass_fds=(control_fd,),
                start_new_session=True,
                env=_SERVER_ENV,
            )
            relay.pid = process.pid
            pidfd = os.pidfd_open(process.pid)  # ProcessLookupError if it died and was reaped
        except BaseException:
            transport.close()
            raise
    except BaseException:
        relay_file.close()
        raise
    finally:
        _close_all([stdin_fd, stdout_fd, stderr_fd])
    return LaunchedServer(process, pidfd, transport, relay.closed)


def _close_all(fds: list[int]) -> None:
    """Close every descriptor in `fds`."""
    for fd in fds:
        os.close(fd)
