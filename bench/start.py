"""Start-up benchmark: interpreter floors, cold and fork-server workers to "ready", and worker USS.

Every figure comes from one run, measured in interleaved rounds and reported as the median over
rounds, with its ratio to the `python -I -S -c pass` floor of the same round: absolute numbers
drift by 30% or more between runs on shared machines. Each worker figure is taken with every
sandbox layer on (an unprivileged uid too when run as root) and with the kernel layers off.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/start.py`

import psutil  # noqa: E402

from sandbox.environment import build_env  # noqa: E402
from sandbox.forkserver import ForkServer  # noqa: E402
from sandbox.launch import build_launch, default_read_only_paths, default_sys_path  # noqa: E402
from sandbox.policy import SandboxPolicy  # noqa: E402
from sandbox.scratch import create_scratch  # noqa: E402

FIXTURES: Final = ROOT / "tests" / "sandbox" / "fixtures"
ENTRY: Final = "forkserver_ready"  # imports asyncio, msgspec and plugins.sdk.worker; writes "!"
SDK_WORKER: Final = "plugins.sdk.worker"
BENCH_UID: Final = 63000  # apart from the host's pool (200000-) and the tests' (62000-)
TIMEOUT_S: Final = 30.0
MIB: Final = 1024 * 1024

# Targets from issue 3, judged here and never asserted.
TARGET_FORK_MS: Final = 10.0
TARGET_COLD_MS: Final = 120.0
TARGET_FORK_USS_MIB: Final = 5.0


@dataclass
class Samples:
    """Per-round values of every figure, keyed by name."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])


@dataclass(frozen=True)
class Setup:
    """What every measurement needs: the interpreter, policies and a running fork-server."""

    python: str
    policies: dict[str, SandboxPolicy]  # "on" / "off" -> a template, scratch_dir filled per run
    server: ForkServer
    scratch_root: str


def _time_command(argv: list[str]) -> float:
    """Run `argv` to completion; return the wall time in ms."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def _uss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_full_info().uss / MIB


async def _settle_and_measure(pid: int) -> float:
    """Return the worker's USS in MiB, read from the host (psutil cannot read it in the sandbox)."""
    await asyncio.sleep(0.02)
    return await asyncio.to_thread(_uss_mib, pid)


async def _finish(
    stdin: asyncio.StreamWriter,
    stdout: asyncio.StreamReader,
    stderr: asyncio.StreamReader,
    wait: Callable[[], Awaitable[int]],
) -> None:
    """Close stdin (the worker exits on EOF), drain its outputs and check its exit status."""
    stdin.close()
    async with asyncio.timeout(TIMEOUT_S):
        _, err = await asyncio.gather(stdout.read(), stderr.read())
        status = await wait()
    if status != 0:
        raise RuntimeError(f"worker exited {status}: {err.decode(errors='replace')}")


def _scratch(setup: Setup, mode: str) -> SandboxPolicy:
    policy = setup.policies[mode]
    name = f"start-{os.getpid()}-{time.monotonic_ns()}"
    path = create_scratch(setup.scratch_root, name, uid=policy.uid, gid=policy.gid)
    return replace(policy, scratch_dir=path)


async def _cold(setup: Setup, mode: str, samples: Samples) -> None:
    """Start a worker through the bootstrap, as a cold activation does; time it to "ready"."""
    policy = _scratch(setup, mode)
    launch = build_launch(policy, ENTRY, python=setup.python)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *launch.argv,
        env=launch.env,
        cwd=launch.cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdin and process.stdout and process.stderr
    async with asyncio.timeout(TIMEOUT_S):
        ready = await process.stdout.read(1)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if ready != b"!":
        await _finish(process.stdin, process.stdout, process.stderr, process.wait)
        raise RuntimeError(f"cold worker never got ready (exit {process.returncode})")
    samples.add(f"cold_{mode}_ms", elapsed_ms)
    samples.add(f"cold_{mode}_uss", await _settle_and_measure(process.pid))
    await _finish(process.stdin, process.stdout, process.stderr, process.wait)


async def _forked(setup: Setup, mode: str, samples: Samples) -> None:
    """Fork a worker from the fork-server; time it from the request to "ready"."""
    policy = _scratch(setup, mode)
    env = build_env(policy.scratch_dir)
    started = time.perf_counter()
    process = await setup.server.spawn(policy, ENTRY, [], env, policy.scratch_dir)
    async with asyncio.timeout(TIMEOUT_S):
        ready = await process.stdout.read(1)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if ready != b"!":
        await _finish(process.stdin, process.stdout, process.stderr, process.wait)
        raise RuntimeError(f"forked worker never got ready (exit {process.returncode})")
    samples.add(f"fork_{mode}_ms", elapsed_ms)
    samples.add(f"fork_{mode}_uss", await _settle_and_measure(process.pid))
    await _finish(process.stdin, process.stdout, process.stderr, process.wait)


async def _round(setup: Setup, samples: Samples, index: int) -> None:
    """Take every measurement once, in an order that rotates from round to round."""
    steps: list[Callable[[], Awaitable[None]]] = []

    async def floor(name: str, argv: list[str]) -> None:
        samples.add(name, await asyncio.to_thread(_time_command, argv))

    steps.append(partial(floor, "floor_isolated_ms", [setup.python, "-I", "-S", "-c", "pass"]))
    steps.append(partial(floor, "floor_site_ms", [setup.python, "-c", "pass"]))
    for mode in ("on", "off"):
        steps.append(partial(_cold, setup, mode, samples))
        steps.append(partial(_forked, setup, mode, samples))
    shift = index % len(steps)
    for step in steps[shift:] + steps[:shift]:
        await step()


def _policies(scratch_root: str) -> dict[str, SandboxPolicy]:
    """Every layer on (an unprivileged uid when root), and the kernel layers off."""
    extra = (str(FIXTURES), str(ROOT / "plugins"), str(ROOT / "protocol"))
    uid = BENCH_UID if os.geteuid() == 0 else None
    on = SandboxPolicy(
        scratch_dir=scratch_root,
        sys_path=default_sys_path(str(FIXTURES), str(ROOT)),
        read_only_paths=default_read_only_paths(*extra),
        uid=uid,
        gid=uid,
    )
    off = replace(on, uid=None, gid=None, isolate_network=False, landlock=False, seccomp=False)
    return {"on": on, "off": off}


def _preload() -> list[str]:
    """The worker runtime the fork-server imports: what the entry module imports."""
    try:
        has_sdk_worker = importlib.util.find_spec(SDK_WORKER) is not None
    except ModuleNotFoundError:  # plugins.sdk itself is missing
        has_sdk_worker = False
    return ["asyncio", "msgspec", *([SDK_WORKER] if has_sdk_worker else [])]


async def _run(rounds: int) -> dict[str, object]:
    scratch_root = tempfile.mkdtemp(prefix="corral-bench-start-")
    os.chmod(scratch_root, 0o711)
    preload = _preload()
    started = time.perf_counter()
    server = await ForkServer.start(preload=preload, sys_path=default_sys_path())
    server_start_ms = (time.perf_counter() - started) * 1000
    try:
        setup = Setup(sys.executable, _policies(scratch_root), server, scratch_root)
        samples = Samples()
        await _round(setup, Samples(), 0)  # warm the page cache; not counted
        for index in range(rounds):
            await _round(setup, samples, index)
        server_uss = await asyncio.to_thread(_uss_mib, server.pid)
    finally:
        await server.close(TIMEOUT_S)
        shutil.rmtree(scratch_root, ignore_errors=True)
    return {
        "rounds": rounds,
        "preload": preload,
        "server_start_ms": server_start_ms,
        "server_uss_mib": server_uss,
        "medians": {name: samples.median(name) for name in samples.values},
        "ratios": {
            name: statistics.median(
                value / floor
                for value, floor in zip(
                    samples.values[name], samples.values["floor_isolated_ms"], strict=True
                )
            )
            for name in samples.values
            if name.endswith("_ms")
        },
    }


def _report(result: dict[str, object]) -> str:
    medians: dict[str, float] = result["medians"]  # type: ignore[assignment]
    ratios: dict[str, float] = result["ratios"]  # type: ignore[assignment]
    rows = [
        ("python -I -S -c pass", "floor_isolated_ms", None),
        ("python -c pass", "floor_site_ms", None),
        ("cold worker to ready, layers on", "cold_on_ms", TARGET_COLD_MS),
        ("cold worker to ready, layers off", "cold_off_ms", TARGET_COLD_MS),
        ("fork-server worker to ready, layers on", "fork_on_ms", TARGET_FORK_MS),
        ("fork-server worker to ready, layers off", "fork_off_ms", TARGET_FORK_MS),
    ]
    lines = [
        f"corral start-up: {result['rounds']} interleaved rounds, medians; "
        f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}",
        f"fork-server preload: {', '.join(result['preload'])}",  # type: ignore[arg-type]
        f"fork-server start to ready: {result['server_start_ms']:.1f} ms (once); "
        f"its USS {result['server_uss_mib']:.1f} MiB",
        "",
        f"{'start':<42}{'median':>10}{'x floor':>9}  target",
    ]
    for label, name, target in rows:
        verdict = "" if target is None else _verdict(medians[name], target, "ms")
        lines.append(f"{label:<42}{medians[name]:>7.1f} ms{ratios[name]:>8.2f}x  {verdict}")
    lines += ["", f"{'worker USS (psutil, at ready)':<42}{'median':>10}           target"]
    for mode in ("on", "off"):
        for kind, target in (("cold", None), ("fork", TARGET_FORK_USS_MIB)):
            value = medians[f"{kind}_{mode}_uss"]
            label = f"{'cold' if kind == 'cold' else 'fork-server'} worker, layers {mode}"
            verdict = "" if target is None else _verdict(value, target, "MiB")
            lines.append(f"{label:<42}{value:>6.1f} MiB{'':>9}  {verdict}")
    return "\n".join(lines)


def _verdict(value: float, target: float, unit: str) -> str:
    return f"<= {target:g} {unit}: {'met' if value <= target else 'MISSED'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args.rounds))
    print(json.dumps(result, indent=2) if args.json else _report(result))


if __name__ == "__main__":
    main()
