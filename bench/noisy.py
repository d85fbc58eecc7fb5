"""Noisy-neighbour benchmark: a healthy tenant's webhook p50/p99, alone and next to a noisy one.

One real corral service (the test harness's `running_api`: sandboxed workers, the real app on
127.0.0.1) runs the noisy fixture (`tests/fixtures/plugins/noisy`) for tenant H and tenant N.
In interleaved rounds, H's `/ok` route is called at a fixed concurrency, first with N idle, then
while N's `/spin` and `/leak` routes are flooded (its worker blocks its loop, leaks until the
cgroup kills it, restarts, crash-loops). Both figures come from the same run, side by side. The
load generator shares the host's process and event loop, as the reliability test does, so the
figures include its cost; compare the two columns, not absolute numbers across machines.

Usage: .venv/bin/python bench/noisy.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.runner.api_harness import NOISY, Api, running_api

H, N = "tenant-h", "tenant-n"
H_LANES = 2
N_LANES = 48
NOISE = (("leak", b"48"), ("spin", b"150"), ("leak", b"48"), ("spin", b"400"), ("ok", b""))


async def _post(api: Api, tenant: str, route: str, body: bytes) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        async with api.client.post(
            f"/webhook/noisy/{tenant}/{route}", data=body, timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            await response.read()
            status: int | str = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - started


async def _phase(api: Api, seconds: float, noisy: bool) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    h_errors = 0
    n_answers: dict[Any, int] = {}
    noise = itertools.cycle(NOISE)

    async def healthy() -> None:
        nonlocal h_errors
        while time.monotonic() < deadline:
            status, elapsed = await _post(api, H, "ok", b"")
            latencies.append(elapsed)
            h_errors += status != 200

    async def flood() -> None:
        while time.monotonic() < deadline:
            route, body = next(noise)
            status, _ = await _post(api, N, route, body)
            n_answers[status] = n_answers.get(status, 0) + 1

    async with asyncio.TaskGroup() as tasks:
        for _ in range(H_LANES):
            tasks.create_task(healthy())
        for _ in range(N_LANES if noisy else 0):
            tasks.create_task(flood())
    latencies.sort()
    return {
        "calls": len(latencies),
        "errors": h_errors,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "noisy": n_answers,
    }


async def _run(rounds: int, seconds: float) -> None:
    async with running_api(environ={"CORRAL_WEBHOOK_RATE_PER_MINUTE": "100000000"}) as api:
        bundle = str(api.state / "bundles" / "noisy")
        await api.call("POST", "/api/v1/admin/plugins", json_body={"path": bundle})
        for tenant in (H, N):
            answer = await api.call(
                "PUT",
                f"/plugins/{NOISY}/config?tenant_id={tenant}",
                json_body={"enabled": True, "settings": {}},
            )
            assert answer.status == 200, answer.text
        await _phase(api, 1.0, noisy=False)  # warm up
        alone, beside = [], []
        for _ in range(rounds):
            alone.append(await _phase(api, seconds, noisy=False))
            beside.append(await _phase(api, seconds, noisy=True))
            await asyncio.sleep(1.0)  # let N's worker settle (or its circuit stay open)
    print(f"tenant H's /ok webhook, {H_LANES} connections, {rounds} rounds of {seconds:.0f} s each")
    print(f"{'':22}{'alone':>16}{'noisy neighbour':>18}")
    for field, unit in (("p50_ms", "ms"), ("p99_ms", "ms")):
        a = statistics.median(r[field] for r in alone)
        b = statistics.median(r[field] for r in beside)
        print(f"{'H ' + field[:3] + ' (median of rounds)':22}{a:>13.2f} {unit}{b:>15.2f} {unit}")
    a_calls, b_calls = sum(r["calls"] for r in alone), sum(r["calls"] for r in beside)
    a_err, b_err = sum(r["errors"] for r in alone), sum(r["errors"] for r in beside)
    print(f"{'H calls (non-200)':22}{f'{a_calls} ({a_err})':>16}{f'{b_calls} ({b_err})':>18}")
    n_total: dict[Any, int] = {}
    for r in beside:
        for status, count in r["noisy"].items():
            n_total[status] = n_total.get(status, 0) + count
    print(
        f"N's answers while noisy ({N_LANES} connections): {dict(sorted(n_total.items(), key=str))}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(_run(args.rounds, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
