from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import HEADER, FrameError, FrameReader, encode_frame


def reader_with(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def read_all(frames: FrameReader) -> list[bytes]:
    out = []
    while (frame := await frames.read_frame()) is not None:
        out.append(frame)
    return out


async def test_read_frame_returns_frames_in_order_then_none_at_clean_eof() -> None:
    data = encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three")
    assert await read_all(FrameReader(reader_with(data))) == [b"one", b"", b"three"]


async def test_read_frame_reassembles_frames_split_byte_by_byte() -> None:
    data = encode_frame(b"x" * 300) + encode_frame(b"yz")
    chunks = [data[i : i + 1] for i in range(len(data))]
    assert await read_all(FrameReader(reader_with(*chunks))) == [b"x" * 300, b"yz"]


async def test_read_frame_rejects_oversized_length_before_reading_the_body() -> None:
    # Only the header arrives and the stream stays open: the reader must not wait for the body.
    frames = FrameReader(reader_with(HEADER.pack(1025), eof=False), max_frame_bytes=1024)
    async with asyncio.timeout(1):
        with pytest.raises(FrameError, match="exceeds 1024"):
            await frames.read_frame()


async def test_read_frame_rejects_a_stream_that_ends_inside_a_header() -> None:
    with pytest.raises(FrameError, match="inside a frame"):
        await FrameReader(reader_with(b"\x00\x00")).read_frame()


async def test_read_frame_rejects_a_stream_that_ends_inside_a_body() -> None:
    with pytest.raises(FrameError, match="inside a frame"):
        await FrameReader(reader_with(HEADER.pack(10) + b"short")).read_frame()


def test_encode_frame_rejects_a_payload_over_the_limit() -> None:
    with pytest.raises(FrameError):
        encode_frame(b"x" * 11, max_frame_bytes=10)


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=2000), max_size=8), cut=st.integers(1, 97))
def test_frames_survive_any_chunking(payloads: list[bytes], cut: int) -> None:
    data = b"".join(encode_frame(p) for p in payloads)
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]

    async def run() -> list[bytes]:
        return await read_all(FrameReader(reader_with(*chunks)))

    assert asyncio.run(run()) == payloads


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_give_frames_or_frame_error_never_anything_else(data: bytes) -> None:
    async def run() -> None:
        frames = FrameReader(reader_with(data), max_frame_bytes=1024)
        try:
            await read_all(frames)
        except FrameError:
            pass

    asyncio.run(run())
