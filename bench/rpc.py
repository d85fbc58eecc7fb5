"""RPC benchmark: corral's host-to-worker round trip and throughput, next to a raw pipe floor.

Every figure comes from one run, measured in interleaved rounds and reported as the median over
rounds; each corral figure is also a ratio to the floor measured in the same round, because absolute
numbers drift by 30% or more between runs on shared machines. What it measures: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import gc
import json
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

# The floor speaks plain length-prefixed bytes with the same stream settings as protocol.streams
# (1 MiB pipes, 64 KiB reads), but none of corral's code: the child below imports only the stdlib.
HEADER: Final = struct.Struct(">I")
READ_CHUNK_BYTES: Final = 64 * 1024
PIPE_BYTES: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = 1031

SMALL_BYTES: Final = 100
LARGE_BYTES: Final = 1024 * 1024
IN_FLIGHT: Final = 64
# Sequential calls take turns between subjects, this many calls a turn (a few ms at 100 B).
SEQUENTIAL_TURN: Final = 50
MEASURE_TIMEOUT_S: Final = 300.0

ROOT: Final = Path(__file__).resolve().parent.parent
BUNDLE: Final = Path(__file__).resolve().parent / "plugins" / "echo_bench"
PLUGIN_ID: Final = "dev.corral.bench.echo"
METHOD: Final = "encryption_provider.encrypt"

# --tune-malloc (the default): frame-sized buffers come from a heap that glibc keeps, instead of
# fresh mmaps or a heap trimmed after every call (which page-faults each 1 MiB buffer in again on
# every call). corral's host (`corral serve`) and workers always run so (protocol.tune_allocator);
# the bench gives every process of the run, the floor's included, the same setting.
MMAP_THRESHOLD_BYTES: Final = 16 * 1024 * 1024
TRIM_THRESHOLD_BYTES: Final = 32 * 1024 * 1024
TUNABLES: Final = (
    f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD_BYTES}:"
    f"glibc.malloc.trim_threshold={TRIM_THRESHOLD_BYTES}"
)

# Targets from issue 2, judged here and never asserted.
TARGET_P50_RATIO: Final = 1.3
TARGET_PIPELINED_SMALL_CALLS_S: Final = 100_000
TARGET_SEQUENTIAL_LARGE_CALLS_S: Final = 250


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many calls each measurement makes, per round."""

    rounds: int
    seq_small: int
    seq_large: int
    pipe_small: int
    pipe_large: int


DEFAULT_PLAN: Final = Plan(rounds=7, seq_small=2000, seq_large=60, pipe_small=20000, pipe_large=256)
QUICK_PLAN: Final = Plan(rounds=2, seq_small=200, seq_large=8, pipe_small=2000, pipe_large=64)

# (mode, payload bytes); mode is "sequential" or "pipelined".
TESTS: Final = (
    ("sequential", SMALL_BYTES),
    ("sequential", LARGE_BYTES),
    ("pipelined", SMALL_BYTES),
    ("pipelined", LARGE_BYTES),
)


def _calls(plan: Plan, mode: str, size: int) -> int:
    small = size == SMALL_BYTES
    if mode == "sequential":
        return plan.seq_small if small else plan.seq_large
    return plan.pipe_small if small else plan.pipe_large


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# -- the floor: raw length-prefixed echo over two pipes --------------------------------------------


def _enlarge_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)


async def _open_streams(
    read_fd: int, write_fd: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    if hasattr(transport, "max_size"):  # plain asyncio reads 256 KiB (and mmaps) per read
        transport.max_size = READ_CHUNK_BYTES
    wtransport, wprotocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(write_fd, "wb", buffering=0),
    )
    return reader, asyncio.StreamWriter(wtransport, wprotocol, None, loop)


async def _echo_frames() -> None:
    """The floor child: echo every length-prefixed frame from fd 0 to fd 1 until EOF."""
    reader, writer = await _open_streams(0, 1)
    while True:
        try:
            header = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError:
            break
        (size,) = HEADER.unpack(header)
        body = await reader.readexactly(size)
        writer.write(header + body)
        await writer.drain()
    writer.close()


class Peer(Protocol):
    """Something that echoes payloads: the floor child or a corral worker."""

    async def call(self, payload: bytes) -> bytes: ...

    async def pipelined(self, payload: bytes, calls: int, in_flight: int) -> None: ...

    async def close(self) -> None: ...


class FloorPeer:
    """The host end of a raw echo child; one flavour of event loop on both ends."""

    def __init__(self, process: asyncio.subprocess.Process, reader: Any, writer: Any) -> None:
        self._process = process
        self._reader: asyncio.StreamReader = reader
        self._writer: asyncio.StreamWriter = writer

    @classmethod
    async def open(cls, loop: str) -> FloorPeer:
        child_in, host_out = os.pipe2(os.O_CLOEXEC)
        host_in, child_out = os.pipe2(os.O_CLOEXEC)
        for fd in (host_out, host_in):
            _enlarge_pipe(fd)
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--floor-child", loop, stdin=child_in, stdout=child_out
        )
        os.close(child_in)
        os.close(child_out)
        reader, writer = await _open_streams(host_in, host_out)
        return cls(process, reader, writer)

    async def call(self, payload: bytes) -> bytes:
        self._writer.write(HEADER.pack(len(payload)) + payload)
        await self._writer.drain()
        (size,) = HEADER.unpack(await self._reader.readexactly(HEADER.size))
        return await self._reader.readexactly(size)

    async def pipelined(self, payload: bytes, calls: int, in_flight: int) -> None:
        # One writer keeps `in_flight` frames outstanding; one reader takes the echoes in order.
        frame = HEADER.pack(len(payload)) + payload
        window = asyncio.Semaphore(in_flight)

        async def send() -> None:
            for _ in range(calls):
                await window.acquire()
                self._writer.write(frame)
                await self._writer.drain()

        async def receive() -> None:
            for _ in range(calls):
                (size,) = HEADER.unpack(await self._reader.readexactly(HEADER.size))
                await self._reader.readexactly(size)
                window.release()

        async with asyncio.TaskGroup() as group:
            group.create_task(send())
            group.create_task(receive())

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        try:
            async with asyncio.timeout(5):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


# -- corral's real path: PluginWorker <-> plugins.sdk.worker ---------------------------------------


class CorralPeer:
    """A `PluginWorker` started by `ColdSpawner`, serving the bench bundle's null cipher."""

    def __init__(self, worker: Any, request_type: Any) -> None:
        self._worker = worker
        self._request = request_type

    @classmethod
    async def open(cls, loop: str) -> CorralPeer:
        from plugins.sdk import EncryptRequest
        from runner.spawn import ColdSpawner, unconfined
        from runner.worker import PluginWorker, WorkerSpec

        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),  # the worker runs the same tree as this host
            "CORRAL_UVLOOP": "1" if loop == "uvloop" else "0",
            "CORRAL_LOG_LEVEL": "WARNING",
        }
        if "GLIBC_TUNABLES" in os.environ:  # set by --tune-malloc, for every process of the run
            env["GLIBC_TUNABLES"] = os.environ["GLIBC_TUNABLES"]
        spec = WorkerSpec(
            plugin_id=PLUGIN_ID, tenant_id="bench", launch=unconfined(str(BUNDLE), env)
        )
        return cls(await PluginWorker.start(spec, ColdSpawner()), EncryptRequest)

    async def call(self, payload: bytes) -> bytes:
        result = await self._worker.call(METHOD, self._request(plaintext=payload))
        ciphertext: bytes = result["ciphertext"]
        return ciphertext

    async def pipelined(self, payload: bytes, calls: int, in_flight: int) -> None:
        params = self._request(plaintext=payload)
        remaining = calls

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self._worker.call(METHOD, params)

        async with asyncio.TaskGroup() as group:
            for _ in range(in_flight):
                group.create_task(lane())

    async def close(self) -> None:
        await self._worker.stop()


# -- measuring -------------------------------------------------------------------------------------


async def _measure(peer: Peer, mode: str, payload: bytes, calls: int) -> dict[str, float]:
    if mode == "pipelined":
        clock = time.perf_counter_ns
        async with asyncio.timeout(MEASURE_TIMEOUT_S):
            start = clock()
            await peer.pipelined(payload, calls, IN_FLIGHT)
            return {"calls_s": calls * 1e9 / (clock() - start)}
    return _sequential_figures(*await _time_calls(peer, payload, calls))


async def _time_calls(peer: Peer, payload: bytes, calls: int) -> tuple[list[int], int]:
    """Make `calls` sequential calls; return each one's round trip and the total, in ns."""
    clock = time.perf_counter_ns
    samples = []
    async with asyncio.timeout(MEASURE_TIMEOUT_S):
        start = clock()
        for _ in range(calls):
            before = clock()
            await peer.call(payload)
            samples.append(clock() - before)
        return samples, clock() - start


def _sequential_figures(samples: list[int], elapsed_ns: int) -> dict[str, float]:
    return {
        "p50_us": statistics.median(samples) / 1000,
        "p99_us": _percentile(samples, 0.99) / 1000,
        "calls_s": len(samples) * 1e9 / elapsed_ns,
    }


def _sequential_side_by_side(
    order: list[Subject],
    peers: dict[Subject, Peer],
    runners: dict[str, asyncio.Runner],
    payload: bytes,
    calls: int,
) -> dict[Subject, dict[str, float]]:
    """Sequential figures for every subject, their calls made in turns of `SEQUENTIAL_TURN`.

    A round trip of ~40 us is at the mercy of whatever else the machine does over the ~100 ms a
    batch of 2,000 takes; in turns of a few milliseconds each, the floor and corral share the
    same stretches of it, and a ratio of the two measures corral rather than the machine.
    """
    samples: dict[Subject, list[int]] = {subject: [] for subject in order}
    elapsed = dict.fromkeys(order, 0)
    for done in range(0, calls, SEQUENTIAL_TURN):
        for subject in order:
            run = runners[subject.loop].run
            run(_time_calls(peers[subject], payload, 1))  # untimed: the first after a switch
            turn, spent = run(
                _time_calls(peers[subject], payload, min(SEQUENTIAL_TURN, calls - done))
            )
            samples[subject] += turn
            elapsed[subject] += spent
    return {subject: _sequential_figures(samples[subject], elapsed[subject]) for subject in order}


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


async def _check_echo(peer: Peer, payload: bytes) -> None:
    if await peer.call(payload) != payload:
        raise SystemExit("bench: the peer did not echo its payload")


@dataclasses.dataclass(frozen=True)
class Subject:
    """One peer under test: `kind` is "floor" or "corral"; `loop` is "uvloop" or "asyncio"."""

    kind: str
    loop: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.loop}"


Rounds = dict[tuple[Subject, str, int], list[dict[str, float]]]


def _run_rounds(
    subjects: list[Subject], plan: Plan, runners: dict[str, asyncio.Runner], quiet: bool
) -> Rounds:
    payloads = {size: os.urandom(size) for _, size in TESTS}
    peers: dict[Subject, Peer] = {}
    results: Rounds = {}
    try:
        for subject in subjects:
            opener = FloorPeer.open if subject.kind == "floor" else CorralPeer.open
            peer: Peer = runners[subject.loop].run(opener(subject.loop))
            peers[subject] = peer
            for payload in payloads.values():
                runners[subject.loop].run(_check_echo(peer, payload))
            for mode, size in TESTS:  # warm up every path once, untimed
                calls = max(4, _calls(plan, mode, size) // 10)
                runners[subject.loop].run(_measure(peer, mode, payloads[size], calls))
        for round_no in range(plan.rounds):
            if not quiet and sys.stderr.isatty():
                print(f"  round {round_no + 1}/{plan.rounds}", file=sys.stderr, flush=True)
            for mode, size in TESTS:
                shift = round_no % len(subjects)  # rotate who goes first, against drift
                order = subjects[shift:] + subjects[:shift]
                calls = _calls(plan, mode, size)
                if mode == "sequential":
                    gc.collect()
                    turns = _sequential_side_by_side(order, peers, runners, payloads[size], calls)
                    for subject, figures in turns.items():
                        results.setdefault((subject, mode, size), []).append(figures)
                    continue
                for subject in order:
                    gc.collect()
                    run = runners[subject.loop].run
                    figures = run(_measure(peers[subject], mode, payloads[size], calls))
                    results.setdefault((subject, mode, size), []).append(figures)
    finally:
        for subject, peer in peers.items():
            with contextlib.suppress(Exception):
                runners[subject.loop].run(peer.close())
    return results


# -- reporting -------------------------------------------------------------------------------------


def _median(values: Iterator[float]) -> float:
    return statistics.median(list(values))


def _summarise(results: Rounds, subjects: list[Subject]) -> list[dict[str, Any]]:
    """One row per (subject, test): medians over rounds, and ratios to the same round's floor."""
    rows = []
    for mode, size in TESTS:
        for subject in subjects:
            rounds = results[(subject, mode, size)]
            floor = results.get((Subject("floor", subject.loop), mode, size))
            row: dict[str, Any] = {"subject": subject.kind, "loop": subject.loop}
            row |= {"mode": mode, "payload_bytes": size, "rounds": len(rounds)}
            for key in rounds[0]:
                row[key] = _median(r[key] for r in rounds)
            if floor is not None and subject.kind != "floor":
                pairs = list(zip(rounds, floor, strict=True))
                for key in rounds[0]:
                    # Latency ratios read "x slower"; throughput ratios "fraction of the floor".
                    row[f"{key}_vs_floor"] = _median(r[key] / f[key] for r, f in pairs)
            rows.append(row)
    return rows


def _find(rows: list[dict[str, Any]], kind: str, loop: str, mode: str, size: int) -> dict[str, Any]:
    for row in rows:
        if (row["subject"], row["loop"], row["mode"], row["payload_bytes"]) == (
            kind,
            loop,
            mode,
            size,
        ):
            return row
    raise KeyError((kind, loop, mode, size))


def _targets(rows: list[dict[str, Any]], loop: str) -> list[dict[str, Any]]:
    def corral(mode: str, size: int) -> dict[str, Any]:
        return _find(rows, "corral", loop, mode, size)

    checks = []
    for size in (SMALL_BYTES, LARGE_BYTES):
        ratio = corral("sequential", size)["p50_us_vs_floor"]
        checks.append(
            {
                "target": f"sequential p50 within {TARGET_P50_RATIO}x the floor, {_size(size)}",
                "measured": f"{ratio:.2f}x",
                "value": ratio,
                "met": ratio <= TARGET_P50_RATIO,
            }
        )
    rate = corral("pipelined", SMALL_BYTES)["calls_s"]
    checks.append(
        {
            "target": f">= {TARGET_PIPELINED_SMALL_CALLS_S:,} pipelined calls/s at 100 B",
            "measured": f"{rate:,.0f} calls/s",
            "value": rate,
            "met": rate >= TARGET_PIPELINED_SMALL_CALLS_S,
        }
    )
    rate = corral("sequential", LARGE_BYTES)["calls_s"]
    checks.append(
        {
            "target": f">= {TARGET_SEQUENTIAL_LARGE_CALLS_S} sequential calls/s at 1 MiB",
            "measured": f"{rate:,.0f} calls/s",
            "value": rate,
            "met": rate >= TARGET_SEQUENTIAL_LARGE_CALLS_S,
        }
    )
    return checks


def _size(size: int) -> str:
    return "1 MiB" if size == LARGE_BYTES else f"{size} B"


def _environment() -> dict[str, str]:
    import msgspec

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "msgspec": msgspec.__version__,
    }
    if _has_uvloop():
        import uvloop

        env["uvloop"] = uvloop.__version__
    return env


def _print_table(
    rows: list[dict[str, Any]], checks: list[dict[str, Any]], head: str, tuned: bool
) -> None:
    print(head)
    print()
    print("sequential round trip, 1 call in flight")
    print(f"  {'':22} {'p50 us':>9} {'p99 us':>9} {'calls/s':>9}   {'p50 vs floor':>12} {'p99':>7}")
    for row in rows:
        if row["mode"] != "sequential":
            continue
        name = f"{row['subject']:6} {row['loop']:7} {_size(row['payload_bytes']):>6}"
        line = f"  {name:22} {row['p50_us']:9.1f} {row['p99_us']:9.1f} {row['calls_s']:9,.0f}"
        if "p50_us_vs_floor" in row:
            line += f"   {row['p50_us_vs_floor']:11.2f}x {row['p99_us_vs_floor']:6.2f}x"
        print(line)
    print()
    print(f"pipelined, {IN_FLIGHT} calls in flight")
    print(f"  {'':22} {'calls/s':>9}   {'of floor':>8}")
    for row in rows:
        if row["mode"] != "pipelined":
            continue
        name = f"{row['subject']:6} {row['loop']:7} {_size(row['payload_bytes']):>6}"
        line = f"  {name:22} {row['calls_s']:9,.0f}"
        if "calls_s_vs_floor" in row:
            line += f"   {row['calls_s_vs_floor']:7.2f}x"
        print(line)
    print()
    print("targets (issue 2; judged from this run, never asserted)")
    for check in checks:
        verdict = "PASS" if check["met"] else "MISS"
        print(f"  {verdict}  {check['target']}: {check['measured']}")
    if not tuned:
        print()
        print("note: at 1 MiB, glibc's heap trimming decides much of the round trip (page faults),")
        print("so 1 MiB figures swing between runs; the default (--tune-malloc) measures without")
        print("that effect, as corral's host and workers run.")


# -- entry point -----------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds; for smoke tests")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio", "both"),
        default="uvloop",
        help="event loop(s) corral runs on, host and worker alike (default uvloop)",
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="plain asyncio everywhere (same as --loop asyncio)"
    )
    parser.add_argument(
        "--tune-malloc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep glibc from trimming frame-sized buffers, in every process of the run, as "
        "corral's host and workers always do (default: on)",
    )
    parser.add_argument("--floor-child", metavar="LOOP", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _subjects(args: argparse.Namespace) -> tuple[list[Subject], str]:
    """Return the subjects to measure and the loop the targets are judged on."""
    uvloop = _has_uvloop() and not args.no_uvloop
    corral_loops = {"uvloop": ["uvloop"], "asyncio": ["asyncio"], "both": ["uvloop", "asyncio"]}[
        args.loop if uvloop else "asyncio"
    ]
    floor_loops = ["uvloop", "asyncio"] if uvloop else ["asyncio"]  # both floors: they are cheap
    subjects = [Subject("floor", loop) for loop in floor_loops]
    subjects += [Subject("corral", loop) for loop in corral_loops]
    return subjects, corral_loops[0]


def _tune_malloc() -> None:
    """Apply TUNABLES to this process (mallopt) and to every child (GLIBC_TUNABLES)."""
    os.environ["GLIBC_TUNABLES"] = TUNABLES
    try:
        mallopt = ctypes.CDLL(None).mallopt  # libc is loaded already
    except (OSError, AttributeError):
        raise SystemExit("bench: --tune-malloc needs glibc") from None
    mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    mallopt(-1, TRIM_THRESHOLD_BYTES)  # M_TRIM_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; always exit 0 unless it could not run."""
    args = _parse(argv)
    if args.floor_child:
        with asyncio.Runner(loop_factory=_loop_factory(args.floor_child)) as runner:
            runner.run(_echo_frames())
        return 0
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    if args.tune_malloc:
        _tune_malloc()
    base = QUICK_PLAN if args.quick else DEFAULT_PLAN
    plan = dataclasses.replace(base, rounds=args.rounds or base.rounds)
    subjects, judged_loop = _subjects(args)
    loops = sorted({s.loop for s in subjects})
    started = time.monotonic()
    runners = {loop: asyncio.Runner(loop_factory=_loop_factory(loop)) for loop in loops}
    try:
        results = _run_rounds(subjects, plan, runners, quiet=args.json)
    finally:
        for runner in runners.values():
            runner.close()
    rows = _summarise(results, subjects)
    checks = _targets(rows, judged_loop)
    env = _environment() | {"seconds": f"{time.monotonic() - started:.1f}"}
    env["malloc"] = "tuned" if args.tune_malloc else "glibc defaults"
    if args.json:
        doc = {"environment": env, "plan": plan.__dict__, "results": rows, "targets": checks}
        print(json.dumps(doc, indent=2))
        return 0
    head = (
        f"corral RPC benchmark: {plan.rounds} interleaved rounds, medians over rounds; ratios are "
        f"to the floor of the same loop in the same round\n"
        f"{env['platform']}, {env['cpus']} CPUs, CPython {env['python']}, "
        f"msgspec {env['msgspec']}, uvloop {env.get('uvloop', 'absent')}, malloc "
        f"{env['malloc']}; {env['seconds']} s\n"
        f"floor: raw length-prefixed echo child, StreamReader on both ends, 1 MiB pipes, 64 KiB "
        f"reads\ncorral: PluginWorker -> plugins.sdk.worker, {METHOD} (null cipher echo)"
    )
    _print_table(rows, checks, head, args.tune_malloc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
