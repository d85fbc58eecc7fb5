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
from collections.abc import Callable, Iterable
from typing import Final, SupportsIndex, cast

from .framing import READ_CHUNK_BYTES

PIPE_BYTES: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = 1031


def enlarge_pipe(fd: int, size: int = PIPE_BYTES) -> None:
    """Grow a pipe's kernel buffer (best effort: not a pipe, or over the system cap, is fine)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory unless `CORRAL_UVLOOP=0` or it is not installed (then asyncio).

    Host (`corral serve`) and workers (`plugins.sdk.worker`) choose their loop with it.
    """
    if os.environ.get("CORRAL_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class FrameStreamReader(asyncio.StreamReader):
    """A StreamReader that can hand each chunk straight to a consumer instead of buffering it.

    Without a sink it is a plain StreamReader. With one (an `Endpoint` installs it), every chunk
    goes to the sink in the transport's callback: no copy through the buffer, and no task has to
    wake up to read it. EOF and errors still arrive the StreamReader way: `read()` returns b"" or
    raises, so the consumer awaits `read()` to learn that the stream ended.
    """

    def __init__(self, limit: int = READ_CHUNK_BYTES) -> None:
        super().__init__(limit=limit)
        self._sink: Callable[[bytes], None] | None = None
        self._read_transport: asyncio.ReadTransport | None = None

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        super().set_transport(transport)
        # uvloop's pipe transports do not subclass asyncio.ReadTransport, but read like one.
        self._read_transport = cast(asyncio.ReadTransport, transport)

    def set_sink(self, sink: Callable[[bytes], None] | None) -> bytes:
        """Send every later chunk to `sink` (None: buffer again); return what is buffered now."""
        self._sink = sink
        if self._read_transport is not None:
            protocol = self._read_transport.get_protocol()
            if isinstance(protocol, FrameStreamProtocol):
                protocol.sink = sink
        if sink is None:
            return b""
        # What arrived before the sink was installed (asyncio's StreamReader keeps a bytearray).
        buffered = bytes(self._buffer)  # type: ignore[attr-defined]
        self._buffer.clear()  # type: ignore[attr-defined]
        return buffered

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if self._sink is None:
            super().feed_data(data)
        elif data:
            self._sink(cast(bytes, data))  # transports feed bytes

    def pause_reading(self) -> None:
        """Stop the transport reading (backpressure while the consumer is at its limit)."""
        if self._read_transport is not None and not self._read_transport.is_closing():
            self._read_transport.pause_reading()

    def resume_reading(self) -> None:
        """Undo `pause_reading`."""
        if self._read_transport is not None and not self._read_transport.is_closing():
            self._read_transport.resume_reading()


class FrameStreamProtocol(asyncio.StreamReaderProtocol):
    """The read protocol of `open_pipe_streams`: while its reader has a sink, each chunk goes
    straight to it, skipping three Python calls of the StreamReader path on every read."""

    sink: Callable[[bytes], None] | None = None

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            super().data_received(data)
        else:
            sink(data)


async def open_pipe_streams(
    read_fd: int, write_fd: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Wrap two pipe (or socket) fds as a StreamReader/StreamWriter pair; owns both fds after.

    The reader is a `FrameStreamReader`, which an `Endpoint` reads without a reader task.
    """
    loop = asyncio.get_running_loop()
    reader = FrameStreamReader(limit=READ_CHUNK_BYTES)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: FrameStreamProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    if hasattr(read_transport, "max_size"):  # asyncio's transport; uvloop reads 64 KiB already
        read_transport.max_size = READ_CHUNK_BYTES
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(write_fd, "wb", buffering=0),
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    return reader, writer
