"""Scale-out benchmark: webhook throughput of one, two and three corral hosts on one PostgreSQL.

A throw-away PostgreSQL cluster (as `tests/pg` starts one) holds the shared state; three
`corral serve` processes share it (and one secret key file); the bench bundle is installed and
activated through the first host and reaches the others through the database. A round-robin
TCP proxy (this file with `--proxy`, its own process, one upstream per client connection) stands
for the load balancer: one proxy per host count, all measured in the same run, in interleaved
rounds, with wrk. It prints requests/s, p50 and p99 per host count and the ratio to one host
(and one host without the proxy, to show what the proxy costs). On a machine with fewer cores
than hosts + workers + proxy + wrk + the database, more hosts cannot go faster: the figures say
how far it is from linear, not what a real deployment on N machines does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

from serving import ROOT, Child, activate, copy_bundle, free_port, run_wrk, stop, trust

PATH: Final = "/webhook/bench/bench/open"
START_TIMEOUT_S: Final = 60.0
WRK_SCRIPT: Final = """
wrk.method = "POST"
wrk.body = '{"event":"message.status","status":"delivered"}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests":%.0f,"duration_us":%.0f,"p50_us":%.0f,' ..
    '"p99_us":%.0f,"non_2xx":%.0f,"errors":%.0f}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


# -- the load balancer --------------------------------------------------------------------


async def _proxy(port: int, upstreams: Sequence[int]) -> None:
    """Accept on `port`; pipe each connection to the next upstream port in turn."""
    turn = itertools.cycle(upstreams)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", next(turn))
        except OSError:
            writer.close()
            return
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(pipe(reader, up_writer))
            tasks.create_task(pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


# -- processes ----------------------------------------------------------------------------


async def _wait_http(child: Child, path: str, status: int = 200) -> None:
    import aiohttp

    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            if child.process.returncode is not None or time.monotonic() > deadline:
                tail = child.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{child.url(path)} never answered {status}:\n{tail}")
            method = "POST" if path.startswith("/webhook") else "GET"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.request(method, child.url(path)) as answer:
                    if answer.status == status:
                        return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _host(work: Path, name: str, env: dict[str, str]) -> AsyncIterator[Child]:
    """Run `corral serve` with its own state dir under `work` and the shared `env`."""
    state = work / name
    state.mkdir(mode=0o755)
    port = free_port()
    log = work / f"{name}.log"
    argv = [sys.executable, "-m", "runner.cli", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--state-dir", str(state)]
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env, cwd=ROOT
        )
    child = Child(process, port, log)
    try:
        await _wait_http(child, "/readyz")
        yield child
    finally:
        await stop(process)


@contextlib.asynccontextmanager
async def _balancer(work: Path, upstreams: Sequence[int]) -> AsyncIterator[Child]:
    port = free_port()
    log = work / f"proxy-{len(upstreams)}.log"
    argv = [sys.executable, __file__, "--proxy", str(port), *map(str, upstreams)]
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=sink
        )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = (await process.stdout.readline()).decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the proxy did not start: {log.read_text()[-2000:]}")
        yield Child(process, port, log)
    finally:
        await stop(process)


# -- set-up -------------------------------------------------------------------------------


def _trust(work: Path) -> Path:
    """Copy the bench bundle and trust it next to the shipped plugins; return the copy."""
    bundle = copy_bundle(work)
    trust(bundle, work)
    return bundle


async def _database(cluster: Any) -> str:
    import asyncpg

    from runner.pg import migrate

    admin = await asyncpg.connect(cluster.url())
    try:
        await admin.execute("CREATE DATABASE corral_bench TEMPLATE template0")
    finally:
        await admin.close()
    url: str = cluster.url("corral_bench")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


# -- measuring ----------------------------------------------------------------------------


async def _wrk(wrk: str, url: str, script: Path, args: argparse.Namespace) -> dict[str, Any]:
    return await run_wrk(
        wrk, url, script, threads=args.threads, connections=args.connections, seconds=args.seconds
    )


async def _run(wrk: str, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.pg.cluster import start_cluster, stop_cluster

    work = Path(tempfile.mkdtemp(prefix="corral-scale-out-", dir="/tmp"))
    os.chmod(work, 0o755)
    cluster = await asyncio.to_thread(start_cluster)
    try:
        url = await _database(cluster)
        bundle = _trust(work)
        env = dict(os.environ)
        env.update(
            CORRAL_STORE=url,
            CORRAL_SECRET_KEY_FILE=str(work / "secret.key"),
            CORRAL_ALLOWLIST_PATH=str(work / "allowlist.toml"),
            CORRAL_CHECKSUMS_PATH=str(work / "checksums.txt"),
            CORRAL_WEBHOOK_RATE_PER_MINUTE="1000000000",
            CORRAL_AUDIT_FSYNC="false",
        )
        script = work / "bench.lua"
        script.write_text(WRK_SCRIPT)
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(_host(work, "host1", env))
            key = (work / "host1" / "bootstrap-key").read_text().strip()
            hosts = [first]
            for n in range(2, args.hosts + 1):
                hosts.append(await stack.enter_async_context(_host(work, f"host{n}", env)))
            await activate(first, key, bundle, "bench-secret")
            for host in hosts:
                await _wait_http(host, PATH)  # the activation reached every host
            subjects: dict[str, str] = {"1 host, direct": first.url(PATH)}
            for n in range(1, args.hosts + 1):
                proxy = await stack.enter_async_context(
                    _balancer(work, [h.port for h in hosts[:n]])
                )
                await _wait_http(proxy, PATH)
                subjects[f"{n} host(s), proxy"] = proxy.url(PATH)
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in subjects}
            for round_no in range(args.rounds):
                for name, target in subjects.items():
                    result = await _wrk(wrk, target, script, args)
                    results[name].append(result)
                    rate = result["requests"] / (result["duration_us"] / 1e6)
                    print(f"round {round_no + 1} {name}: {rate:,.0f} req/s", file=sys.stderr)
    finally:
        await asyncio.to_thread(stop_cluster, cluster)
        shutil.rmtree(work, ignore_errors=True)
    return _summary(results, args)


def _summary(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for name, runs in results.items():
        rates = [r["requests"] / (r["duration_us"] / 1e6) for r in runs]
        rows.append(
            {
                "subject": name,
                "requests_per_s": round(statistics.median(rates)),
                "p50_ms": round(statistics.median(r["p50_us"] for r in runs) / 1000, 2),
                "p99_ms": round(statistics.median(r["p99_us"] for r in runs) / 1000, 2),
                "non_2xx": sum(r["non_2xx"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
            }
        )
    base = next(r["requests_per_s"] for r in rows if r["subject"] == "1 host(s), proxy")
    for row in rows:
        row["ratio_to_1_host"] = round(row["requests_per_s"] / base, 2) if base else None
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "wrk": {"threads": args.threads, "connections": args.connections, "seconds": args.seconds},
        "rounds": args.rounds,
        "rows": rows,
    }


def _print(doc: dict[str, Any]) -> None:
    print(
        f"scale-out webhook bench: {doc['machine']['cpus']} CPUs, wrk -t{doc['wrk']['threads']} "
        f"-c{doc['wrk']['connections']} -d{doc['wrk']['seconds']}s, median of {doc['rounds']} "
        "interleaved rounds"
    )
    print(f"{'subject':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}{'non-2xx':>9}")
    for row in doc["rows"]:
        print(
            f"{row['subject']:<22}{row['requests_per_s']:>9,}{row['p50_ms']:>9}"
            f"{row['p99_ms']:>9}{row['ratio_to_1_host']:>7}{row['non_2xx'] + row['errors']:>9}"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--proxy", type=int, help=argparse.SUPPRESS)
    parser.add_argument("upstreams", type=int, nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.proxy is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_proxy(args.proxy, args.upstreams))
        return 0
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 3
    doc = asyncio.run(_run(wrk, args))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
