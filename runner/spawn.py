"""How the host starts a worker process: the `Spawner` seam and the plain (cold) spawner.

A spawner returns a started process whose stdin/stdout are the RPC channel. Confinement is the
sandbox's job; a spawner only decides how the process comes to exist.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from protocol import enlarge_pipe, open_pipe_streams


class WorkerProcess(Protocol):
    """What the host needs of a started worker process."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...


@dataclass(slots=True)
class SpawnedWorker:
    """A started worker: its process, the channel streams, and its stderr."""

    process: WorkerProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stderr: asyncio.StreamReader


class Spawner(Protocol):
    """Start `argv` with its channel on stdin/stdout and its logs on stderr."""

    async def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None
    ) -> SpawnedWorker: ...


class ColdSpawner:
    """Start every worker as a fresh process, in its own session, with only the given env."""

    async def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None
    ) -> SpawnedWorker:
        """Spawn `argv`; raise OSError if it cannot be executed."""
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
        assert process.stderr is not None
        return SpawnedWorker(process, reader, writer, process.stderr)


def worker_argv(bundle_dir: str, python: str = sys.executable) -> list[str]:
    """The command line of an unconfined worker serving `bundle_dir`."""
    return [python, "-m", "plugins.sdk.worker", bundle_dir]
