"""asyncio streams over raw pipe file descriptors, read in 64 KiB chunks.

Both ends of the channel are pipes (the worker's stdin/stdout). asyncio's pipe transport would
allocate a 256 KiB buffer per read, which glibc serves with mmap each time; 64 KiB halves the round
trip (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from typing import Final

from .framing import READ_CHUNK_BYTES

PIPE_BYTES: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = 1031


def enlarge_pipe(fd: int, size: int = PIPE_BYTES) -> None:
    """Grow a pipe's kernel buffer (best effort: not a pipe, or over the system cap, is fine)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)


async def open_pipe_streams(
    read_fd: int, write_fd: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Wrap two pipe (or socket) fds as a StreamReader/StreamWriter pair; owns both fds after."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    if hasattr(read_transport, "max_size"):  # asyncio's transport; uvloop reads 64 KiB already
        read_transport.max_size = READ_CHUNK_BYTES
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(write_fd, "wb", buffering=0),
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    return reader, writer
