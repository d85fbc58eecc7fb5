"""Protocol fuzzing: over a million generated frames at the host's side of the worker channel.

The host side is the real one: `PluginWorker.start` (handshake, `Endpoint` in host
configuration, the `http.request` host function of `runner.host` over a real `EgressBroker`)
over in-memory streams whose far end is a fake worker in this process, so no process is needed
and a million frames take seconds. Hypothesis draws structure-aware seeds (message shapes,
methods, params, ids); a fast mutation loop turns them into frames.

- One *survivor* session takes almost all of them: well-framed messages a worker may send,
  with junk everywhere the protocol tolerates it (replies to unknown ids, unknown or malformed
  notifications, `$/cancel` with junk, calls to unknown methods, `http.request` with junk or
  forbidden params). It must stay open, answer every call it was sent, and still work.
- Many short sessions each end with one fatal frame (not msgpack, not a message, an id out of
  range, an oversized length, a duplicate in-flight id, a cut frame). Each must close with a
  protocol error, and only it: a witness session and the survivor keep answering.
- Nothing may escape to the event loop's exception handler: the host never crashes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    HTTP_REQUEST_METHOD,
    INITIALIZE_METHOD,
    PROTOCOL_VERSION,
    FrameParser,
    FrameStreamReader,
    InitializeResult,
    load_manifest,
)
from runner.egress import EgressBroker
from runner.egress_settings import EgressSettings
from runner.host import Host
from runner.spawn import LaunchRequest, SpawnedWorker
from runner.worker import PluginWorker, WorkerSpec
from tests.runner.api_harness import NOISY_FIXTURE

pytestmark = [pytest.mark.reliability]

PLUGIN_ID = "dev.corral.test.noisy"  # its manifest grants no egress at all
FRAMES = 1_000_000
FATAL_SESSIONS = 1000
BATCH = 4096  # frames per write: the survivor reads them as a real pipe would deliver them
MAX_ID = 2**32 - 1
HEADER = struct.Struct(">I")
ENCODE = msgspec.msgpack.encode
CLOSE_TIMEOUT_S = 5.0


class _SinkTransport(asyncio.Transport):
    """Where the host's writes go: parsed as frames and handed to the fake worker."""

    def __init__(self, peer: FakeWorker) -> None:
        super().__init__()
        self._peer = peer
        self._closing = False
        self._protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._peer.parser.feed(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            if self._protocol is not None:
                asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0


class _FakeProcess:
    """A worker process that is only a pid: signals end it, `wait` reaps it."""

    _next_pid = 4_000_000

    def __init__(self, peer: FakeWorker) -> None:
        _FakeProcess._next_pid += 1
        self.pid = _FakeProcess._next_pid
        self.returncode: int | None = None
        self._peer = peer
        self._exited = asyncio.Event()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int, /) -> None:
        if self.returncode is None:
            self.returncode = -sig
            self._peer.hang_up()
            self._exited.set()


@dataclass
class FakeWorker:
    """The far end of one session: answers the host's calls, and is fed frames by the test."""

    reader: FrameStreamReader = field(default_factory=FrameStreamReader)
    stderr: asyncio.StreamReader = field(default_factory=asyncio.StreamReader)
    replies: int = 0  # answers the host sent to our calls
    parser: FrameParser = field(init=False)
    process: _FakeProcess = field(init=False)

    def __post_init__(self) -> None:
        self.parser = FrameParser(self._on_host_frame)
        self.process = _FakeProcess(self)
        self._loop = asyncio.get_running_loop()

    def spawned(self) -> SpawnedWorker:
        transport = _SinkTransport(self)
        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
        protocol.connection_made(transport)
        transport._protocol = protocol
        writer = asyncio.StreamWriter(transport, protocol, None, self._loop)
        return SpawnedWorker(self.process, self.reader, writer, self.stderr)

    def _on_host_frame(self, frame: Any) -> None:
        message = msgspec.msgpack.decode(bytes(frame))
        if message[0] == 1:
            self.replies += 1
        elif message[0] == 0:  # the host calls us: answer on the next turn of the loop
            msgid, method = message[1], message[2]
            result: Any = "pong"
            if method == INITIALIZE_METHOD:
                result = InitializeResult(
                    protocol_version=PROTOCOL_VERSION,
                    plugin_id=PLUGIN_ID,
                    plugin_version="1.0.0",
                    categories=["webhook_handler"],
                    methods=["webhook_handler.handle"],
                )
            self._loop.call_soon(self.send, [frame_of([1, msgid, None, result])])

    def send(self, frames: list[bytes]) -> None:
        """Deliver `frames` to the host in one read, as a pipe would."""
        if not self.reader.at_eof():
            self.reader.feed_data(b"".join(frames))

    def hang_up(self) -> None:
        """The process is gone: its end of the pipe closes."""
        if not self.reader.at_eof():
            self.reader.feed_eof()
        if not self.stderr.at_eof():
            self.stderr.feed_eof()


class _Spawner:
    def __init__(self, peer: FakeWorker) -> None:
        self._peer = peer

    async def spawn(self, request: LaunchRequest) -> SpawnedWorker:
        return self._peer.spawned()


def frame_of(message: Any) -> bytes:
    body = ENCODE(message)
    return HEADER.pack(len(body)) + body


# -- seeds (hypothesis) and the mutation loop ---------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_methods = st.one_of(
    st.sampled_from(
        [HTTP_REQUEST_METHOD, "$/cancel", "$/log", "ping", "shutdown", "initialize", "", "x" * 300]
    ),
    st.text(max_size=30),
)
_http_params = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "", "\x00"]),
        "url": st.sampled_from(
            ["https://example.com/", "http://127.0.0.1/", "ftp://x", "", "https://[::1]/"]
        ),
    },
    optional={"headers": _values, "body": st.binary(max_size=30), "timeout_s": _scalars},
)


@dataclass
class Seeds:
    methods: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    http_params: list[Any] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)


def collect_seeds() -> Seeds:
    """Draw seeds with hypothesis (a few hundred examples; the mutation loop multiplies them)."""
    seeds = Seeds()

    @settings(
        max_examples=300,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        _methods,
        _values,
        _http_params,
        st.fixed_dictionaries({"code": st.text(max_size=10), "message": st.text(max_size=10)}),
    )
    def draw(method: str, value: Any, http: Any, error: Any) -> None:
        seeds.methods.append(method)
        seeds.values.append(value)
        seeds.http_params.append(http)
        seeds.errors.append(error)

    draw()
    return seeds


class Tolerated:
    """Frames a worker may send that the host must survive; calls get fresh ids."""

    def __init__(self, seeds: Seeds, rng: random.Random) -> None:
        self._seeds = seeds
        self._rng = rng
        self._ids = iter(range(1, MAX_ID))
        self.calls = 0
        # Pre-encoded pieces: the loop below only picks and joins them.
        self._values = [ENCODE(v) for v in seeds.values]
        self._methods = [ENCODE(m) for m in seeds.methods]
        self._errors = [ENCODE(e) for e in seeds.errors] + [ENCODE(None)]

    def frames(self, count: int) -> Iterator[bytes]:
        """Yield `count` frames: mostly notifications and stray replies, some calls."""
        rng, values, methods, errors = self._rng, self._values, self._methods, self._errors
        pack, choice, random_ = HEADER.pack, rng.choice, rng.random
        notify_prefix, cancel = b"\x93\x02", ENCODE("$/cancel")
        for _ in range(count):
            roll = random_()
            if roll < 0.55:  # [2, method, params]
                body = notify_prefix + choice(methods) + choice(values)
            elif roll < 0.75:  # [2, "$/cancel", junk]
                body = notify_prefix + cancel + choice(values)
            elif roll < 0.99:  # [1, unknown msgid, error, result]
                msgid = ENCODE(rng.randrange(MAX_ID + 1))
                body = b"\x94\x01" + msgid + choice(errors) + choice(values)
            else:  # [0, fresh msgid, method, params]: unknown methods and junk host calls
                self.calls += 1
                msgid = ENCODE(next(self._ids))
                if random_() < 0.5:
                    params = ENCODE(choice(self._seeds.http_params))
                    body = b"\x94\x00" + msgid + ENCODE(HTTP_REQUEST_METHOD) + params
                else:
                    body = b"\x94\x00" + msgid + choice(methods) + choice(values)
            yield pack(len(body)) + body


def fatal_frames(rng: random.Random, tolerated: Tolerated) -> list[bytes]:
    """A few tolerated frames, then one that breaks the protocol."""
    frames = list(tolerated.frames(rng.randrange(0, 8)))
    kind = rng.randrange(7)
    if kind == 0:  # not msgpack at all
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        frames.append(HEADER.pack(len(junk) + 1) + b"\xc1" + junk)
    elif kind == 1:  # msgpack, but not a message
        frames.append(frame_of(rng.choice([[9, 1], {"a": 1}, "hello", [0, 1], [1, -1, None, 2]])))
    elif kind == 2:  # an id out of range
        frames.append(frame_of([0, MAX_ID + 1 + rng.randrange(1000), "x", None]))
    elif kind == 3:  # a length past the limit
        frames.append(HEADER.pack(2**32 - 1 - rng.randrange(1000)))
    elif kind == 4:  # the same id twice while the first call is in flight
        msgid = rng.randrange(MAX_ID)
        frames += [frame_of([0, msgid, "x", None]), frame_of([0, msgid, "y", None])]
    elif kind == 5:  # wrong types in a known shape
        frames.append(frame_of([1, 5, {"code": 1, "message": []}, None]))
    else:  # the stream ends inside a frame
        frames.append(HEADER.pack(100) + b"\x90" * rng.randrange(0, 99))
    return frames


# -- sessions --------------------------------------------------------------------------------------


def http_function(broker: EgressBroker) -> Any:
    """The real `http.request` host function of `runner.host`, for one activation."""
    spec = SimpleNamespace(
        tenant_id="tenant-z", plugin_id=PLUGIN_ID, manifest=load_manifest(NOISY_FIXTURE)
    )
    return Host._egress_for(SimpleNamespace(egress=broker), spec)  # type: ignore[arg-type]


async def open_session(broker: EgressBroker) -> tuple[PluginWorker, FakeWorker]:
    peer = FakeWorker()
    spec = WorkerSpec(plugin_id=PLUGIN_ID, tenant_id="tenant-z", launch=LaunchRequest(()))
    worker = await PluginWorker.start(
        spec, _Spawner(peer), host_functions={HTTP_REQUEST_METHOD: http_function(broker)}
    )
    return worker, peer


async def assert_answers(worker: PluginWorker) -> None:
    assert worker.is_alive, worker.close_reason
    assert await worker.call("fuzz.echo", None, timeout_s=CLOSE_TIMEOUT_S) == "pong"


async def test_a_million_fuzzed_frames_close_only_the_sessions_that_broke_the_protocol(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)  # each broken session logs a warning: not the point here
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    rng = random.Random(8)
    started = time.monotonic()
    seeds = collect_seeds()
    seeded = time.monotonic()
    tolerated = Tolerated(seeds, rng)
    broker = EgressBroker(EgressSettings(), None)
    survivor, survivor_peer = await open_session(broker)
    witness, _ = await open_session(broker)
    sent = 0
    try:
        # Short sessions, each broken by its last frame.
        for n in range(FATAL_SESSIONS):
            worker, peer = await open_session(broker)
            frames = fatal_frames(rng, tolerated)
            sent += len(frames)
            peer.send(frames)
            if frames[-1].startswith(HEADER.pack(100)):
                peer.hang_up()
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await worker.wait_closed()
            assert not worker.is_alive
            reason = worker.close_reason or ""
            assert "protocol error" in reason, reason
            await worker.kill()
            if n % 100 == 0:
                await assert_answers(witness)
        # The survivor: the rest of the million, a pipe's read at a time.
        calls_before = tolerated.calls
        broken = time.monotonic()
        while sent < FRAMES:
            batch = list(tolerated.frames(min(BATCH, FRAMES - sent)))
            survivor_peer.send(batch)
            sent += len(batch)
            await asyncio.sleep(0)  # the calls it started run; their replies go out
        async with asyncio.timeout(30):
            while survivor_peer.replies < tolerated.calls - calls_before:
                await asyncio.sleep(0.01)
        await assert_answers(survivor)
        await assert_answers(witness)
    finally:
        for worker in (survivor, witness):
            await worker.kill()
        await broker.close()
        loop.set_exception_handler(None)
    elapsed = time.monotonic() - started
    print(
        f"\n{sent} frames ({survivor_peer.replies} calls answered) in {elapsed:.1f} s; "
        f"{FATAL_SESSIONS} sessions closed by a fatal frame (seeds {seeded - started:.1f} s, "
        f"short sessions {broken - seeded:.1f} s, survivor {elapsed - (broken - started):.1f} s)"
    )
    assert sent >= FRAMES
    assert escaped == []
