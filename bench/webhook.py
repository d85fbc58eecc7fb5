"""Webhook benchmark: a POST through the corral host to a sandboxed worker, next to a bare handler.

A real HTTP load generator (wrk) drives, in interleaved rounds, a bare aiohttp handler in its own
process and the webhook routes of `corral serve` itself (one host process, a temporary state dir),
whose sandboxed worker answers; figures are medians over rounds and ratios to the bare handler in
the same round, because absolute numbers drift on shared machines. What it measures:
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

from serving import ROOT, TENANT, Child, activate, copy_bundle, free_port, run_wrk, stop, trust

SLUG: Final = "bench"
SECRET: Final = "bench-webhook-secret-0123456789"
# A provider-style status callback: small, JSON, the same bytes to every subject.
BODY: Final = json.dumps(
    {
        "event": "message.status",
        "id": "SM" + "a" * 32,
        "status": "delivered",
        "to": "+15550002222",
        "from": "+15550001111",
        "timestamp": 1767225600,
    },
    separators=(",", ":"),
).encode()
SIGNATURE: Final = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
# The per-(route, tenant) limit (default 600 a minute) would answer 429 within a second: raised.
RATE_PER_MINUTE: Final = "1000000000"
WRK_MISSING_EXIT: Final = 3
START_TIMEOUT_S: Final = 60.0
TARGET_RATIO: Final = 0.8  # issue 6: webhook requests/s >= 0.8x the bare handler's

# (subject, what it is); the URL of each is built in `_run`.
SUBJECTS: Final = (
    ("bare", "bare aiohttp handler, own process"),
    ("webhook", f"/webhook/{SLUG}/{TENANT}/open (verify = none)"),
    ("webhook-signed", f"/webhook/{SLUG}/{TENANT}/signed (HMAC-SHA256 in core)"),
)
COMPARE_SUBJECT: Final = "webhook-compare"

# wrk's own report goes to stdout too; `done` adds one line of JSON that we parse.
WRK_SCRIPT: Final = f"""
wrk.method = "POST"
wrk.body = [[{BODY.decode()}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Signature"] = "{SIGNATURE}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%.0f,"duration_us":%.0f,"p50_us":%.0f,"p90_us":%.0f,' ..
    '"p99_us":%.0f,"max_us":%.0f,"non_2xx":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,' ..
    '"timeout":%.0f}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long each measurement runs, and how many interleaved rounds."""

    rounds: int
    duration_s: int
    warmup_s: int


DEFAULT_PLAN: Final = Plan(rounds=5, duration_s=5, warmup_s=2)
QUICK_PLAN: Final = Plan(rounds=1, duration_s=1, warmup_s=0)


# -- the bare server, its own process -------------------------------------------------------------


async def _bare_child() -> None:
    """Serve a bare aiohttp handler with the daemon's settings: read the body, answer 200 `ok`.

    Like `corral serve` (runner/daemon.py): plain asyncio (uvloop with `--loop uvloop`), the
    allocator tuned, `client_max_size` of the admin app, `AppRunner(access_log=None)`, one
    `TCPSite`. The port is free, and printed as `PORT n`. Runs until SIGTERM.
    """
    from aiohttp import web

    from protocol import tune_allocator
    from runner.app import DEFAULT_MAX_BODY_BYTES

    tune_allocator()

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"ok", content_type="text/plain", charset="utf-8")

    app = web.Application(client_max_size=DEFAULT_MAX_BODY_BYTES)
    app.router.add_post("/bare", bare)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(f"PORT {runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


# -- driving them ---------------------------------------------------------------------------------


def _ensure_wrk(may_install: bool) -> str | None:
    """Return wrk's path; as root with apt-get, install Debian's `wrk` when it is missing."""
    found = shutil.which("wrk")
    if found or not may_install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    print("bench: wrk is missing; apt-get install -y wrk", file=sys.stderr)

    def apt_get(*argv: str) -> bool:
        done = subprocess.run(["apt-get", *argv], capture_output=True, check=False)
        return done.returncode == 0

    if not apt_get("install", "-y", "-q", "wrk") and apt_get("update", "-q"):
        apt_get("install", "-y", "-q", "wrk")
    return shutil.which("wrk")


def _prepare_state(work: Path, instances: int) -> Path:
    """Copy the bench bundle (with `instances`), and trust it next to the shipped plugins."""
    state = work / "state"
    state.mkdir(mode=0o755)
    bundle = copy_bundle(work)
    manifest = bundle / "plugin.toml"
    text = manifest.read_text()
    marker = 'kind = "webhook_handler"\n'
    manifest.write_text(text.replace(marker, f"{marker}instances = {instances}\n", 1))
    trust(bundle, state)
    return bundle


def _failed(role: str, log: Path) -> RuntimeError:
    tail = log.read_text(errors="replace")[-3000:]
    return RuntimeError(f"the {role} server did not start:\n{tail}")


@contextlib.asynccontextmanager
async def _corral_serve(
    work: Path, root: Path = ROOT, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Child]:
    """Run `corral serve` from the checkout `root` on a free port with `work`'s state dir."""
    import aiohttp

    state = work / "state"
    env = dict(os.environ)
    env.update(
        CORRAL_ALLOWLIST_PATH=str(state / "allowlist.toml"),
        CORRAL_CHECKSUMS_PATH=str(state / "checksums.txt"),
        CORRAL_CONFIG_PATH=str(state / "config" / "corral.config.json"),
        CORRAL_WEBHOOK_RATE_PER_MINUTE=RATE_PER_MINUTE,
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])),
    )
    env.update(extra_env or {})
    port = free_port()
    log = work / "corral-serve.log"
    argv = [sys.executable, "-m", "runner.cli", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--state-dir", str(state)]
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env, cwd=root
        )
    child = Child(process, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                if process.returncode is not None or time.monotonic() > deadline:
                    raise _failed("corral", log)
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(child.url("/healthz")) as answer:
                        if answer.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield child
    finally:
        await stop(process)


@contextlib.asynccontextmanager
async def _bare_server(work: Path, loop: str) -> AsyncIterator[Child]:
    """Run `bench/webhook.py --bare-child` on the event loop `loop`; it prints its port."""
    log = work / "bare.log"
    argv = [sys.executable, __file__, "--bare-child", "--loop", loop]
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=sink, cwd=ROOT
        )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = (await process.stdout.readline()).decode()
        if not line.startswith("PORT "):
            raise _failed("bare", log)
        yield Child(process, int(line.split()[1]), log)
    finally:
        await stop(process)


async def _activate(host: Child, state: Path, bundle: Path) -> None:
    """Install the bench bundle and activate it for the bench tenant, through the admin API."""
    await activate(host, (state / "bootstrap-key").read_text().strip(), bundle, SECRET)


async def _check(urls: dict[str, str]) -> None:
    """POST once to every subject (the request wrk sends); each must answer 200 `ok`."""
    import aiohttp

    headers = {"Content-Type": "application/json", "X-Signature": SIGNATURE}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for subject, url in urls.items():
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                async with http.post(url, data=BODY, headers=headers) as answer:
                    status, text = answer.status, await answer.text()
                if status == 200 and text == "ok":
                    break
                if status != 503 or time.monotonic() > deadline:  # 503: worker still starting
                    raise RuntimeError(f"{subject} answered {status}: {text[:200]}")
                await asyncio.sleep(0.2)


def _cpu_s(pids: list[int]) -> tuple[float, float]:
    """Return the (user, system) CPU seconds the processes `pids` have spent so far."""
    import psutil

    user = system = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            user, system = user + times.user, system + times.system
    return user, system


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


async def _wrk(wrk: str, url: str, script: Path, args: argparse.Namespace, seconds: int) -> Any:
    """Run wrk against `url` for `seconds`; return what its `done` hook reported."""
    return await run_wrk(
        wrk, url, script, threads=args.threads, connections=args.connections, seconds=seconds
    )


async def _measure(
    wrk: str, url: str, script: Path, args: argparse.Namespace, seconds: int, pids: dict[str, int]
) -> dict[str, Any]:
    """One wrk run, with the CPU the server process and its descendants spent meanwhile."""
    workers = _descendants(pids["server"])
    before = _cpu_s([pids["server"]]), _cpu_s(workers)
    run = await _wrk(wrk, url, script, args, seconds)
    after = _cpu_s([pids["server"]]), _cpu_s(workers)
    requests = max(1, run["requests"])
    run["requests_s"] = run["requests"] / (run["duration_us"] / 1e6)
    for i, who in enumerate(("server", "workers")):
        user, system = (after[i][j] - before[i][j] for j in (0, 1))
        run[f"{who}_cpu_us_per_request"] = (user + system) * 1e6 / requests
        run[f"{who}_system_cpu_us_per_request"] = system * 1e6 / requests
    return run


Rounds = list[dict[str, dict[str, Any]]]


async def _rounds(
    wrk: str, urls: dict[str, str], pids: dict[str, int], script: Path, args: argparse.Namespace
) -> Rounds:
    """Warm every subject up (untimed), then run the rounds, rotating who goes first."""
    names = list(urls)
    for name in names if args.plan.warmup_s else []:
        await _wrk(wrk, urls[name], script, args, args.plan.warmup_s)
    results: Rounds = []
    for index in range(args.plan.rounds):
        shift = index % len(names)
        measured: dict[str, dict[str, Any]] = {}
        for name in names[shift:] + names[:shift]:
            server = {"server": pids[name]}
            measured[name] = await _measure(
                wrk, urls[name], script, args, args.plan.duration_s, server
            )
            if not args.json:
                run = measured[name]
                print(
                    f"  round {index + 1}/{args.plan.rounds} {name:15} "
                    f"{run['requests_s']:9,.0f} requests/s  p50 {run['p50_us'] / 1000:6.2f} ms  "
                    f"p99 {run['p99_us'] / 1000:6.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
        results.append(measured)
    return results


def _summarise(results: Rounds, subjects: list[tuple[str, str]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, about in subjects:
        runs = [r[name] for r in results]

        def median(field: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[field] for run in runs)

        row: dict[str, Any] = {
            "subject": name,
            "what": about,
            "requests_s": median("requests_s"),
            "p50_ms": median("p50_us") / 1000,
            "p99_ms": median("p99_us") / 1000,
            "server_cpu_us_per_request": median("server_cpu_us_per_request"),
            "server_system_cpu_us_per_request": median("server_system_cpu_us_per_request"),
            "workers_cpu_us_per_request": median("workers_cpu_us_per_request"),
            "workers_system_cpu_us_per_request": median("workers_system_cpu_us_per_request"),
            "requests": sum(run["requests"] for run in runs),
            "non_2xx": sum(run["non_2xx"] for run in runs),
            "socket_errors": {
                kind: sum(run[kind] for run in runs)
                for kind in ("connect", "read", "write", "timeout")
            },
            "rounds": [
                {k: run[k] for k in ("requests_s", "p50_us", "p99_us", "requests")} for run in runs
            ],
        }
        if name != "bare":
            bare = [r["bare"] for r in results]
            row["requests_s_vs_bare"] = statistics.median(
                run["requests_s"] / b["requests_s"] for run, b in zip(runs, bare, strict=True)
            )
            row["p50_vs_bare"] = statistics.median(
                run["p50_us"] / max(1, b["p50_us"]) for run, b in zip(runs, bare, strict=True)
            )
        rows.append(row)
    return rows


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    webhook = next(row for row in rows if row["subject"] == "webhook")
    ratio = webhook["requests_s_vs_bare"]
    return [
        {
            "target": f"webhook requests/s >= {TARGET_RATIO}x the bare handler's (issue 6)",
            "measured": f"{ratio:.2f}x",
            "value": ratio,
            "met": ratio >= TARGET_RATIO,
        }
    ]


def _environment(wrk: str, args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "aiohttp": aiohttp.__version__,
        "wrk": (version.stdout or version.stderr).split("[")[0].strip(),
        "sandbox_mode": os.environ.get("CORRAL_SANDBOX_MODE", "strict"),
        "loop": args.loop,
    }
    with contextlib.suppress(ImportError):
        import uvloop

        env["uvloop"] = uvloop.__version__
    return env


def _print_report(doc: dict[str, Any]) -> None:
    env, setup, plan = doc["environment"], doc["setup"], doc["plan"]
    print(
        f"corral webhook benchmark: {plan['rounds']} interleaved rounds of {plan['duration_s']} s, "
        f"medians over rounds; ratios are to the bare handler in the same round\n"
        f"{env['platform']}, {env['cpus']} CPUs, CPython {env['python']}, aiohttp "
        f"{env['aiohttp']}, {env['wrk']}; {env['seconds']} s\n"
        f"wrk: {setup['connections']} connections, {setup['threads']} thread(s), POST of "
        f"{setup['body_bytes']} B; webhook rate limit raised to {setup['rate_per_minute']}/min\n"
        f"corral: one host process, {setup['instances']} worker(s) for the activation "
        f"(instances = {setup['instances']}), sandbox {env['sandbox_mode']}; bare handler on "
        f"{env['loop']}"
    )
    if setup.get("compare"):
        print(f"compare: a second corral serve from {setup['compare']} (own state dir and port)")
    print()
    head = f"  {'':15} {'requests/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'vs bare':>8}"
    print(head + f" {'server us/req':>13} {'worker us/req':>13} {'non-2xx':>8} {'sock err':>8}")
    for row in doc["results"]:
        ratio = f"{row['requests_s_vs_bare']:7.2f}x" if "requests_s_vs_bare" in row else ""
        print(
            f"  {row['subject']:15} {row['requests_s']:10,.0f} {row['p50_ms']:7.2f} "
            f"{row['p99_ms']:7.2f} {ratio:>8} {row['server_cpu_us_per_request']:13.0f} "
            f"{row['workers_cpu_us_per_request']:13.0f} {row['non_2xx']:8d} "
            f"{sum(row['socket_errors'].values()):8d}"
        )
    print()
    for row in doc["results"]:
        print(f"  {row['subject']}: {row['what']}")
    print()
    print("targets (issue 6; judged from this run, never asserted)")
    for check in doc["targets"]:
        print(f"  {'PASS' if check['met'] else 'MISS'}  {check['target']}: {check['measured']}")


async def _run(wrk: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-webhook-", dir="/tmp"))
    os.chmod(work, 0o755)  # worker uids traverse the state dir
    started = time.monotonic()
    try:
        bundle = _prepare_state(work, args.instances)
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        subjects = list(SUBJECTS)
        async with contextlib.AsyncExitStack() as stack:
            host = await stack.enter_async_context(_corral_serve(work))
            bare = await stack.enter_async_context(_bare_server(work, args.loop))
            await _activate(host, work / "state", bundle)
            base = f"/webhook/{SLUG}/{TENANT}"
            urls = {
                "bare": bare.url("/bare"),
                "webhook": host.url(f"{base}/open"),
                "webhook-signed": host.url(f"{base}/signed"),
            }
            pids = {"bare": bare.process.pid, "webhook": host.process.pid}
            pids["webhook-signed"] = host.process.pid
            if args.compare is not None:
                other_work = work / "compare"
                other_work.mkdir(mode=0o755)
                other_bundle = _prepare_state(other_work, args.instances)
                env = dict(v.split("=", 1) for v in args.compare_env)
                other = await stack.enter_async_context(
                    _corral_serve(other_work, args.compare, env)
                )
                await _activate(other, other_work / "state", other_bundle)
                urls[COMPARE_SUBJECT] = other.url(f"{base}/open")
                pids[COMPARE_SUBJECT] = other.process.pid
                about = f"/webhook/{SLUG}/{TENANT}/open, corral from {args.compare}"
                subjects.append((COMPARE_SUBJECT, about))
            await _check(urls)
            results = await _rounds(wrk, urls, pids, script, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = _summarise(results, subjects)
    env = _environment(wrk, args) | {"seconds": round(time.monotonic() - started, 1)}
    setup = {
        "connections": args.connections,
        "threads": args.threads,
        "instances": args.instances,
        "body_bytes": len(BODY),
        "rate_per_minute": int(RATE_PER_MINUTE),
        "compare": str(args.compare) if args.compare is not None else None,
    }
    plan = dataclasses.asdict(args.plan)
    return {
        "environment": env,
        "setup": setup,
        "plan": plan,
        "results": rows,
        "targets": _targets(rows),
    }


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds; for smoke tests")
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument(
        "--duration", type=int, help="seconds of load per subject per round (default 5, quick 1)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--instances", type=int, default=1, help="workers for the bench activation (1)"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install wrk when missing"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default=None,
        help="event loop of the bare handler (default: the one `corral serve` uses, uvloop "
        "unless CORRAL_UVLOOP=0 or it is not installed)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help=f"also run `corral serve` from the checkout DIR ({COMPARE_SUBJECT!r} row)",
    )
    parser.add_argument(
        "--compare-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the --compare host only (repeatable)",
    )
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; exit 0 once measured, 3 when wrk is missing."""
    args = _parse(argv)
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    if args.loop is None:
        from protocol import loop_factory as serve_loop  # the daemon's own choice

        args.loop = "asyncio" if serve_loop() is None else "uvloop"
    if args.bare_child:
        with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:  # as `corral serve`
            runner.run(_bare_child())
        return 0
    base = QUICK_PLAN if args.quick else DEFAULT_PLAN
    args.plan = dataclasses.replace(
        base, rounds=args.rounds or base.rounds, duration_s=args.duration or base.duration_s
    )
    wrk = _ensure_wrk(not args.no_install)
    if wrk is None:
        print("bench: wrk not found (Debian: apt-get install -y wrk)", file=sys.stderr)
        return WRK_MISSING_EXIT
    doc = asyncio.run(_run(wrk, args))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
