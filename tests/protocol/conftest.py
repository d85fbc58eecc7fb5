"""Stream pairs for protocol tests: in-process, over a socketpair, no child processes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from protocol import Endpoint, FrameStreamReader
from protocol.streams import FrameStreamProtocol

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# Which reader `stream_pair` builds: a plain StreamReader (the endpoint pulls frames in a task), or
# a FrameStreamReader (the endpoint parses frames in the transport's callback) behind a plain
# StreamReaderProtocol or behind the FrameStreamProtocol that `open_pipe_streams` uses.
# test_endpoint runs every test with each.
READER_KINDS = ("pull", "push", "push-protocol")
reader_kind = "pull"


async def stream_pair() -> tuple[StreamPair, StreamPair]:
    left, right = socket.socketpair()
    if reader_kind == "pull":
        return await asyncio.open_connection(sock=left), await asyncio.open_connection(sock=right)
    return await _push_streams(left), await _push_streams(right)


async def _push_streams(sock: socket.socket) -> StreamPair:
    loop = asyncio.get_running_loop()
    reader = FrameStreamReader()
    kind = FrameStreamProtocol if reader_kind == "push-protocol" else asyncio.StreamReaderProtocol
    transport, protocol = await loop.create_connection(lambda: kind(reader), sock=sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    """Two connected endpoints, `a` and `b`, both reading; closed and checked after the test."""
    (ar, aw), (br, bw) = await stream_pair()
    a, b = Endpoint(ar, aw, name="a"), Endpoint(br, bw, name="b")
    a.start()
    b.start()
    yield a, b
    await a.aclose()
    await b.aclose()
