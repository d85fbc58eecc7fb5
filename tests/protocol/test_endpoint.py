from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest

from protocol import (
    HEADER,
    CallTimeoutError,
    ConnectionClosedError,
    Endpoint,
    ErrorCode,
    RemoteError,
    encode_frame,
)
from protocol.messages import MAX_MSGID, Request

from . import conftest
from .conftest import READER_KINDS, stream_pair


@pytest.fixture(autouse=True, params=READER_KINDS)
def each_reader_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "reader_kind", request.param)


async def test_request_returns_the_handlers_result(endpoints: tuple[Endpoint, Endpoint]) -> None:
    a, b = endpoints

    async def double(params: Any) -> Any:
        return params["n"] * 2

    b.register("double", double)
    assert await a.request("double", {"n": 21}) == 42


async def test_many_calls_in_flight_are_matched_by_msgid_in_any_order(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, b = endpoints

    async def echo_later(params: Any) -> Any:
        await asyncio.sleep(random.random() / 100)
        return params

    b.register("echo", echo_later)
    results = await asyncio.gather(*(a.request("echo", i) for i in range(200)))
    assert results == list(range(200))


async def test_unknown_method_answers_method_not_found(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, _ = endpoints
    with pytest.raises(RemoteError) as info:
        await a.request("nope")
    assert info.value.code == ErrorCode.METHOD_NOT_FOUND
    assert info.value.method == "nope"


class Params(msgspec.Struct):
    name: str
    count: int


async def test_params_that_do_not_convert_answer_invalid_params_with_the_path(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, b = endpoints
    called = False

    async def handler(params: Params) -> None:
        nonlocal called
        called = True

    b.register("typed", handler, params_type=Params)
    with pytest.raises(RemoteError) as info:
        await a.request("typed", {"name": "x", "count": "three"})
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert "$.count" in info.value.message
    assert not called


async def test_handler_remote_error_keeps_its_code_and_data(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, b = endpoints

    async def refuse(params: Any) -> None:
        raise RemoteError(ErrorCode.PLUGIN_ERROR, "provider said no", {"retry": False})

    b.register("refuse", refuse)
    with pytest.raises(RemoteError) as info:
        await a.request("refuse")
    assert (info.value.code, info.value.message, info.value.data) == (
        "plugin_error",
        "provider said no",
        {"retry": False},
    )


async def test_unexpected_handler_exception_answers_internal_without_its_text(
    endpoints: tuple[Endpoint, Endpoint], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = endpoints

    async def boom(params: Any) -> None:
        raise ValueError("patient name: Jane Doe")

    b.register("boom", boom)
    with pytest.raises(RemoteError) as info:
        await a.request("boom")
    assert info.value.code == ErrorCode.INTERNAL
    assert "Jane" not in str(info.value) and "Traceback" not in str(info.value)
    assert "Traceback" in caplog.text  # the traceback stays in the local log


async def test_deadline_raises_call_timeout_and_cancels_the_remote_handler(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, b = endpoints
    cancelled = asyncio.Event()

    async def hang(params: Any) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    b.register("hang", hang)
    with pytest.raises(CallTimeoutError):
        await a.request("hang", timeout_s=0.05)
    async with asyncio.timeout(2):
        await cancelled.wait()


async def test_cancelling_a_call_sends_cancel_to_the_peer(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, b = endpoints
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(params: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    b.register("hang", hang)
    call = asyncio.create_task(a.request("hang"))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    async with asyncio.timeout(2):
        await cancelled.wait()
    # The peer keeps serving after a cancellation.
    b.register("ok", lambda p: asyncio.sleep(0, "fine"))
    assert await a.request("ok") == "fine"


async def test_a_cancel_that_arrives_answers_cancelled_to_a_raw_caller() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    b = Endpoint(br, bw, name="b")

    async def hang(params: Any) -> None:
        await asyncio.sleep(60)

    b.register("hang", hang)
    b.start()
    codec = b._codec
    aw.write(encode_frame(codec.encode(Request(5, "hang", None))))
    aw.write(encode_frame(codec.encode(__import__("protocol").Notification("$/cancel", [5]))))
    await aw.drain()
    size = HEADER.unpack(await ar.readexactly(4))[0]
    reply = codec.decode(await ar.readexactly(size))
    assert reply.error is not None and reply.error.code == ErrorCode.CANCELLED
    aw.close()
    await b.aclose()


async def test_msgids_wrap_around_without_colliding() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    a = Endpoint(ar, aw, name="a", initial_msgid=MAX_MSGID - 2)
    b = Endpoint(br, bw, name="b")

    async def echo(params: Any) -> Any:
        await asyncio.sleep(0.01)
        return params

    b.register("echo", echo)
    a.start()
    b.start()
    assert await asyncio.gather(*(a.request("echo", i) for i in range(6))) == list(range(6))
    assert await a.request("echo", "after") == "after"
    assert a._next_msgid == 4  # MAX-2, MAX-1, MAX, 0, 1, 2, 3 were used
    await a.aclose()
    await b.aclose()


async def test_calls_work_in_both_directions_while_serving(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, b = endpoints

    async def lookup(params: Any) -> Any:
        return {"key": params, "value": "from-a"}

    async def serve(params: Any) -> Any:
        answer = await b.request("lookup", params)  # b calls a while a waits on b
        return answer["value"]

    a.register("lookup", lookup)
    b.register("serve", serve)
    assert await a.request("serve", "k") == "from-a"


async def test_pending_calls_fail_with_a_clear_error_when_the_peer_goes_away() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    a = Endpoint(ar, aw, name="a")
    a.start()
    call = asyncio.create_task(a.request("anything"))
    await asyncio.sleep(0.01)
    bw.close()  # the peer vanishes without answering
    with pytest.raises(ConnectionClosedError, match="peer closed"):
        await call
    with pytest.raises(ConnectionClosedError):
        await a.request("again")
    await a.aclose()


async def test_garbage_from_the_peer_closes_only_that_session_with_a_reason() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    a = Endpoint(ar, aw, name="a")
    a.start()
    call = asyncio.create_task(a.request("x"))
    await asyncio.sleep(0.01)
    bw.write(encode_frame(b"\xc1\xc1 not msgpack"))
    await bw.drain()
    with pytest.raises(ConnectionClosedError, match="protocol error"):
        await call
    assert a.is_closed and "malformed" in (a.close_reason or "")
    bw.close()


async def test_an_oversized_frame_header_closes_the_session() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    a = Endpoint(ar, aw, name="a", max_frame_bytes=1024)
    a.start()
    bw.write(HEADER.pack(2**31))
    await bw.drain()
    async with asyncio.timeout(2):
        await a.wait_closed()
    assert "exceeds 1024" in (a.close_reason or "")
    bw.close()


async def test_a_result_over_the_frame_limit_answers_too_large() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    a = Endpoint(ar, aw, name="a")
    b = Endpoint(br, bw, name="b", max_frame_bytes=1000)

    async def big(params: Any) -> bytes:
        return b"x" * 5000

    b.register("big", big)
    a.start()
    b.start()
    with pytest.raises(RemoteError) as info:
        await a.request("big")
    assert info.value.code == ErrorCode.TOO_LARGE
    await a.aclose()
    await b.aclose()


async def test_incoming_calls_are_bounded_and_excess_waits_in_the_pipe() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    a = Endpoint(ar, aw, name="a")
    b = Endpoint(br, bw, name="b", max_concurrent_requests=2)
    running = peak = 0

    async def slow(params: Any) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return params

    b.register("slow", slow)
    a.start()
    b.start()
    assert await asyncio.gather(*(a.request("slow", i) for i in range(10))) == list(range(10))
    assert peak == 2
    await a.aclose()
    await b.aclose()


async def test_aclose_leaves_no_task_behind(endpoints: tuple[Endpoint, Endpoint]) -> None:
    a, b = endpoints

    async def hang(params: Any) -> None:
        await asyncio.sleep(60)

    b.register("hang", hang)
    calls = [asyncio.create_task(a.request("hang")) for _ in range(5)]
    await asyncio.sleep(0.05)
    await b.aclose()
    await a.aclose()
    for call in calls:
        with pytest.raises(ConnectionClosedError):
            await call
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []


async def test_handlers_run_in_a_task_and_may_use_timeout_and_taskgroup(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    # In push mode most handlers run their first step in the read callback (protocol.eager):
    # they must not be able to tell.
    a, b = endpoints

    async def current(params: Any) -> bool:
        return asyncio.current_task() is not None

    async def bounded(params: Any) -> str:
        async with asyncio.timeout(params):
            await asyncio.sleep(0.2)
        return "finished"

    async def grouped(params: Any) -> int:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(asyncio.sleep(0, result=n)) for n in range(params)]
        return sum(task.result() for task in tasks)

    b.register("current", current)
    b.register("bounded", bounded)
    b.register("grouped", grouped)
    assert await a.request("current") is True
    with pytest.raises(RemoteError) as info:
        await a.request("bounded", 0.01)
    assert info.value.code == ErrorCode.TIMEOUT
    assert await a.request("bounded", 2) == "finished"
    assert await a.request("grouped", 4) == 6
    assert await asyncio.gather(*(a.request("current") for _ in range(20))) == [True] * 20


async def test_notifications_reach_their_handler(endpoints: tuple[Endpoint, Endpoint]) -> None:
    a, b = endpoints
    seen: list[Any] = []
    arrived = asyncio.Event()
    b.register_notification("event", lambda p: (seen.append(p), arrived.set()))
    await a.notify("event", {"n": 1})
    await a.notify("unknown-is-ignored", None)
    async with asyncio.timeout(2):
        await arrived.wait()
    assert seen == [{"n": 1}]


async def test_a_large_frame_arriving_in_many_reads_round_trips(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    a, b = endpoints

    async def echo(params: Any) -> Any:
        return params

    b.register("echo", echo)
    payload = bytes(range(256)) * 4096  # 1 MiB: many 64 KiB reads on each side
    assert await a.request("echo", payload) == payload


async def test_aclose_while_the_reader_is_already_shutting_down_returns_normally() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    b = Endpoint(br, bw, name="b")
    b.start()
    aw.close()  # b's reader sees EOF and starts shutting down on its own
    async with asyncio.timeout(2):
        while not b.is_closed:
            await asyncio.sleep(0)
    await b.aclose()  # used to raise CancelledError: the reader was cancelled in wait_closed()
    assert b.close_reason == "peer closed the stream"


async def test_the_negotiated_frame_limit_applies_to_reading_too() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    b = Endpoint(br, bw, name="b")
    b.max_frame_bytes = 1024  # as the worker does after `initialize`
    b.start()
    aw.write(HEADER.pack(2048))
    await aw.drain()
    async with asyncio.timeout(2):
        await b.wait_closed()
    assert "exceeds 1024" in (b.close_reason or "")
    aw.close()


class Blob(msgspec.Struct):
    data: bytes


async def test_params_convert_as_from_plain_values_when_a_typed_decode_refuses_them(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    # Params are decoded straight into the method's struct; what `msgspec.convert` accepted from
    # plain values (here bytes as base64 text) is still accepted.
    a, b = endpoints

    async def size(params: Blob) -> int:
        return len(params.data)

    b.register("size", size, params_type=Blob)
    assert await a.request("size", Blob(b"abc")) == 3
    assert await a.request("size", {"data": "YWJjZA=="}) == 4
    with pytest.raises(RemoteError) as info:
        await a.request("size", {"data": 5})
    assert info.value.code == ErrorCode.INVALID_PARAMS and "$.data" in info.value.message


async def test_params_that_are_not_utf8_close_the_session() -> None:
    (ar, aw), (br, bw) = await stream_pair()
    b = Endpoint(br, bw, name="b")
    b.register("typed", lambda p: asyncio.sleep(0), params_type=Params)
    b.start()
    aw.write(encode_frame(b"\x94\x00\x01\xa5typed\x81\xa4name\xa2\xff\xfe"))
    await aw.drain()
    async with asyncio.timeout(2):
        await b.wait_closed()
    assert "malformed" in (b.close_reason or "")
    aw.close()


async def test_calls_arriving_in_one_read_are_all_answered_in_order_of_completion() -> None:
    # Many frames in one chunk: their answers are written a few frames per write (corked).
    (ar, aw), (br, bw) = await stream_pair()
    b = Endpoint(br, bw, name="b")
    b.register("echo", lambda p: asyncio.sleep(0, p))
    b.start()
    codec = b._codec
    requests = [Request(i, "echo", i) for i in range(50)]
    aw.write(b"".join(encode_frame(codec.encode(r)) for r in requests))
    await aw.drain()
    replies = []
    async with asyncio.timeout(5):
        for _ in requests:
            size = HEADER.unpack(await ar.readexactly(4))[0]
            replies.append(codec.decode(await ar.readexactly(size)))
    assert [(r.msgid, r.result) for r in replies] == [(i, i) for i in range(50)]
    aw.close()
    await b.aclose()
