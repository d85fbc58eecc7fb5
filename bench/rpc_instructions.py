"""RPC benchmark in one process: the Python work of a round trip, counted in instructions.

bench/rpc.py times the real wire between two processes; on a shared machine its figures swing by
30% from run to run, and a change worth 5% drowns in that. This bench runs the same two peers,
the raw echo floor and corral's host endpoint with the worker runtime, inside one process over
in-memory transports (no pipes, no second process, no system calls per call), and counts the CPU
instructions of a round trip under valgrind: the same count each run, whatever else the machine
is doing. A count is the difference between a run of many calls and a run of few, divided by the
difference in calls, so start-up cancels out. What it measures: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import rpc  # noqa: E402
import uvloop  # noqa: E402

from protocol import (  # noqa: E402
    PROTOCOL_VERSION,
    Endpoint,
    FrameStreamReader,
    InitializeParams,
)
from protocol.streams import FrameStreamProtocol  # noqa: E402

FEW_CALLS: Final = 500
MANY_CALLS: Final = 2500
TIMING_CALLS: Final = 20_000
SUBJECTS: Final = ("floor", "corral")
MODES: Final = ("sequential", "pipelined")


class MemoryTransport(asyncio.Transport):
    """One direction of an in-memory pipe: what is written reaches the peer's protocol on the
    next turn of the loop, as a chunk of one read would."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self.peer: asyncio.Protocol | None = None
        self._protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.peer is not None
        self._loop.call_soon(self.peer.data_received, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _connect(
    loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader
) -> tuple[asyncio.StreamReaderProtocol, MemoryTransport]:
    """A stream end: the protocol `reader` is fed through, and the transport it writes to."""
    if isinstance(reader, FrameStreamReader):
        protocol: asyncio.StreamReaderProtocol = FrameStreamProtocol(reader)
    else:
        protocol = asyncio.StreamReaderProtocol(reader)
    transport = MemoryTransport(loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return protocol, transport


def stream_pair(
    loop: asyncio.AbstractEventLoop, reader_type: type[asyncio.StreamReader]
) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], ...]:
    """Two connected (reader, writer) pairs, as `protocol.open_pipe_streams` gives each side."""
    ends = []
    for _ in range(2):
        reader = reader_type()
        protocol, transport = _connect(loop, reader)
        ends.append((reader, protocol, transport))
    (r1, p1, t1), (r2, p2, t2) = ends
    t1.peer, t2.peer = p2, p1
    return (
        (r1, asyncio.StreamWriter(t1, p1, r1, loop)),
        (r2, asyncio.StreamWriter(t2, p2, r2, loop)),
    )


async def _floor_child(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """bench/rpc.py's floor child, on an in-memory stream."""
    while True:
        header = await reader.readexactly(rpc.HEADER.size)
        (size,) = rpc.HEADER.unpack(header)
        body = await reader.readexactly(size)
        writer.write(header + body)
        await writer.drain()


async def open_peer(subject: str) -> tuple[rpc.Peer, list[Any]]:
    """A peer of bench/rpc.py's kind, and what keeps its other end alive."""
    loop = asyncio.get_running_loop()
    if subject == "floor":
        (hr, hw), (cr, cw) = stream_pair(loop, asyncio.StreamReader)
        child = loop.create_task(_floor_child(cr, cw))
        return rpc.FloorPeer(None, hr, hw), [child]  # type: ignore[arg-type]
    from plugins.sdk import EncryptRequest
    from plugins.sdk.worker import WorkerRuntime

    (hr, hw), (wr, ww) = stream_pair(loop, FrameStreamReader)
    host = Endpoint(hr, hw, name="host", call_timeout_s=30.0)
    worker = Endpoint(wr, ww, name="worker")
    runtime = WorkerRuntime(rpc.BUNDLE, worker)
    worker.start()
    host.start()
    params = InitializeParams(
        protocol_version=PROTOCOL_VERSION, tenant_id="bench", plugin_id=rpc.PLUGIN_ID
    )
    await host.request("initialize", params)
    return rpc.CorralPeer(_HostEnd(host), EncryptRequest), [runtime, worker]


class _HostEnd:
    """What bench/rpc.py's CorralPeer uses of a PluginWorker: `call` (the endpoint's request)
    and `stop`. The process around it is what this bench leaves out."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def call(self, method: str, params: Any) -> Any:
        return await self._endpoint.request(method, params)

    async def stop(self) -> None:
        await self._endpoint.aclose()


async def _run_calls(subject: str, mode: str, calls: int) -> None:
    peer, _keep = await open_peer(subject)
    await rpc._check_echo(peer, os.urandom(rpc.SMALL_BYTES))
    payload = os.urandom(rpc.SMALL_BYTES)
    if mode == "pipelined":
        await peer.pipelined(payload, calls, rpc.IN_FLIGHT)
    else:
        for _ in range(calls):
            await peer.call(payload)


# -- counting --------------------------------------------------------------------------------------


def _instructions(subject: str, mode: str, calls: int) -> int:
    """Instructions valgrind counted for a whole run of `calls` round trips."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                subject,
                mode,
                str(calls),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"bench: valgrind failed:\n{done.stderr[-2000:]}")
        for line in out.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit("bench: valgrind wrote no instruction total")


def count(subject: str, mode: str) -> float:
    """Instructions per round trip: (many calls - few calls) / (MANY - FEW)."""
    with ThreadPoolExecutor(2) as pool:  # two single-threaded valgrinds, one per core
        few, many = pool.map(lambda n: _instructions(subject, mode, n), (FEW_CALLS, MANY_CALLS))
    return (many - few) / (MANY_CALLS - FEW_CALLS)


# -- timing (a cross-check: in-process wall time, interleaved rounds) -----------------------------


async def _time_rounds(rounds: int) -> dict[tuple[str, str], list[float]]:
    peers = {subject: await open_peer(subject) for subject in SUBJECTS}
    payload = os.urandom(rpc.SMALL_BYTES)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for mode in MODES:
            for subject in SUBJECTS:
                peer = peers[subject][0]
                start = time.perf_counter_ns()
                if mode == "pipelined":
                    await peer.pipelined(payload, TIMING_CALLS, rpc.IN_FLIGHT)
                else:
                    for _ in range(TIMING_CALLS):
                        await peer.call(payload)
                per_call_us = (time.perf_counter_ns() - start) / TIMING_CALLS / 1000
                results.setdefault((subject, mode), []).append(per_call_us)
    return results


def main(argv: list[str] | None = None) -> int:
    """Print instructions (and in-process time) per round trip, corral against the floor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    parser.add_argument("--no-valgrind", action="store_true", help="timing only, no counts")
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    parser.add_argument("--run", nargs=3, metavar=("SUBJECT", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        subject, mode, calls = args.run
        uvloop.run(_run_calls(subject, mode, int(calls)))
        return 0
    counted = not args.no_valgrind
    if counted and shutil.which("valgrind") is None:
        raise SystemExit("bench: no valgrind (apt-get install valgrind); or pass --no-valgrind")
    timings = uvloop.run(_time_rounds(args.rounds))
    rows = []
    for mode in MODES:
        for subject in SUBJECTS:
            row: dict[str, Any] = {"subject": subject, "mode": mode}
            row["us_per_call"] = statistics.median(timings[(subject, mode)])
            if counted:
                row["instructions"] = count(subject, mode)
            rows.append(row)
        floor, corral = rows[-2], rows[-1]
        corral["us_vs_floor"] = statistics.median(
            c / f for c, f in zip(timings[("corral", mode)], timings[("floor", mode)], strict=True)
        )
        if counted:
            corral["instructions_vs_floor"] = corral["instructions"] / floor["instructions"]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "results": rows}, indent=2))
        return 0
    print("corral RPC round trip in one process (in-memory transports, 100 B, uvloop)")
    print(f"  {'':22} {'instructions':>12} {'vs floor':>9} {'us/call':>9} {'vs floor':>9}")
    for row in rows:
        name = f"{row['subject']:6} {row['mode']}"
        counts = f"{'-':>12} {'':9}"
        if counted:
            vs = row.get("instructions_vs_floor")
            counts = f"{row['instructions']:12,.0f} " + (f"{vs:8.2f}x" if vs else " " * 9)
        ratio = f"{row['us_vs_floor']:8.2f}x" if "us_vs_floor" in row else ""
        print(f"  {name:22} {counts} {row['us_per_call']:9.2f} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
