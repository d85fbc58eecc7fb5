"""Stream pairs for protocol tests: in-process, over a socketpair, no child processes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from protocol import Endpoint

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def stream_pair() -> tuple[StreamPair, StreamPair]:
    left, right = socket.socketpair()
    return await asyncio.open_connection(sock=left), await asyncio.open_connection(sock=right)


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
