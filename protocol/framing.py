"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes of msgpack.

`FrameReader` pulls frames out of large reads without copying each one through the stream's
buffer; `encode_frame` prepends the header. What is inside a frame is `messages`' business.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Final

from .errors import FrameError

HEADER: Final = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES: Final = 8 * 1024 * 1024
READ_CHUNK_BYTES: Final = 64 * 1024


def encode_frame(payload: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Return header + payload; raise FrameError if the payload exceeds the frame limit."""
    if len(payload) > max_frame_bytes:
        raise FrameError(f"frame of {len(payload)} bytes exceeds {max_frame_bytes}")
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Read frames from a StreamReader, parsing every complete frame out of each chunk.

    The length is checked against `max_frame_bytes` before any of the body is awaited, so a hostile
    header can never make us allocate beyond the limit. Only the incomplete tail is buffered.
    """

    def __init__(
        self, reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        self._reader = reader
        self.max_frame_bytes = max_frame_bytes
        self._frames: deque[bytes] = deque()
        self._tail = bytearray()
        self._need = 0  # bytes the frame in _tail still misses (0: header not complete)

    async def read_frame(self) -> bytes | None:
        """Return the next frame's payload, or None if the stream ended cleanly between frames.

        Raises FrameError for an oversized length or a stream that ends inside a frame.
        """
        while not self._frames:
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            if not chunk:
                if self._tail:
                    raise FrameError(f"stream ended inside a frame ({len(self._tail)} bytes held)")
                return None
            self._feed(chunk)
        return self._frames.popleft()

    def _feed(self, chunk: bytes) -> None:
        if self._tail:
            self._tail += chunk
            data: bytes | bytearray = self._tail
        else:
            data = chunk
        view = memoryview(data)
        offset, end = 0, len(data)
        header_size = HEADER.size
        try:
            while end - offset >= header_size:
                (size,) = HEADER.unpack_from(view, offset)
                if size > self.max_frame_bytes:
                    raise FrameError(f"frame of {size} bytes exceeds {self.max_frame_bytes}")
                stop = offset + header_size + size
                if stop > end:
                    break
                self._frames.append(bytes(view[offset + header_size : stop]))
                offset = stop
        finally:
            view.release()
        if offset == end:
            self._tail = bytearray()
        elif data is self._tail:
            del self._tail[:offset]
        else:
            self._tail = bytearray(data[offset:])
