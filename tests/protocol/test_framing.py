from __future__ import annotations

import asyncio
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import DEFAULT_MAX_FRAME_BYTES, HEADER, FrameError, FrameReader, encode_frame
from protocol.framing import CORK_BYTES, CORK_FRAMES, FrameWriter


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


class _RecordingWriter:
    """Just enough of a StreamWriter for FrameWriter: records every write call."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        self.calls.append([bytes(data)])

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append([bytes(d) for d in data])

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def _frame_writer(limit: int = DEFAULT_MAX_FRAME_BYTES) -> tuple[FrameWriter, _RecordingWriter]:
    out = _RecordingWriter()
    return FrameWriter(cast(asyncio.StreamWriter, out), limit), out


async def test_frame_writer_writes_at_once_unless_corked() -> None:
    frames, out = _frame_writer()
    frames.write(b"one")
    assert out.calls == [[encode_frame(b"one")]]
    assert not frames.must_drain


async def test_frame_writer_sends_corked_frames_in_capped_batches_then_writes_at_once() -> None:
    frames, out = _frame_writer()
    frames.cork(asyncio.get_running_loop())
    bodies = [str(i).encode() for i in range(CORK_FRAMES + 2)]
    for body in bodies:
        frames.write(body)
    assert out.calls == [[encode_frame(b) for b in bodies[:CORK_FRAMES]]]  # the cap was reached
    await asyncio.sleep(0)  # the callbacks queued before cork() have run: the rest goes out
    assert out.calls[1:] == [[encode_frame(b) for b in bodies[CORK_FRAMES:]]]
    frames.write(b"later")
    assert out.calls[2:] == [[encode_frame(b"later")]]


async def test_frame_writer_sends_a_large_body_after_what_it_holds_without_joining_it() -> None:
    frames, out = _frame_writer()
    frames.cork(asyncio.get_running_loop())
    frames.write(b"small")
    large = b"x" * CORK_BYTES
    frames.write(large)
    assert out.calls == [[encode_frame(b"small")], [HEADER.pack(len(large)), large]]


def test_frame_writer_rejects_a_body_over_the_limit() -> None:
    frames, out = _frame_writer(limit=4)
    with pytest.raises(FrameError, match="exceeds 4"):
        frames.write(b"12345")
    assert out.calls == []
