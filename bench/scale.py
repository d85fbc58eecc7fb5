"""Scale benchmark: 1,000 (tenant, plugin) activations on one host, all live at once, then idle.

The host is the real service as `corral serve` composes it (config store, audit trail, verified
install, sandboxed workers from the fork-server, webhooks over HTTP); the only bench-only part is
the plugin, `bench/plugins/scale_bench`, trusted in a temporary allowlist and checksums file.
Load comes from a separate client process (`--client`), so it does not share the host's loop.

Phase 1, all live: activate N tenants through `Control.set_enabled` (what the admin API does),
check that every activation answers its webhook as itself, measure memory (RSS, USS, PSS) of the
host, fork-server and workers, the host's CPU while nothing happens, and webhook p50/p99 for
random tenants. Phase 2, scale to zero: restart the service on the same store with
`CORRAL_WORKER_IDLE_SECONDS` set, wait for every worker to be stopped, count live processes,
and time the first call after an idle stop. Targets are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/scale.py`

import psutil  # noqa: E402
from aiohttp import web  # noqa: E402

from runner.digest import tree_digest  # noqa: E402
from runner.sandboxing import SandboxSettings  # noqa: E402
from runner.service import Service, ServiceSettings  # noqa: E402
from runner.slot_types import WatchSettings, WorkerState  # noqa: E402

SCRIPT: Final = Path(__file__).resolve()
PLUGIN_DIR: Final = ROOT / "bench" / "plugins" / "scale_bench"
PLUGIN_ID: Final = "dev.corral.bench.scale"
SLUG: Final = "scale"
MIB: Final = 1024 * 1024
# What the host holds per live worker: its stdin, stdout and stderr pipes and a pidfd; the
# fork-server holds one more pidfd per worker. Doubled for drain-and-switch and slack.
HOST_FDS_PER_WORKER: Final = 4
FDS_MARGIN: Final = 256
READY_TIMEOUT_S: Final = 600.0
TARGET_ACTIVATIONS: Final = 1000  # issue 8: all live at once on 2 cores and 24 GiB, each answering


# -- the load client (a separate process) -----------------------------------------------------


async def _client(job: dict[str, Any]) -> dict[str, Any]:
    """Send the job's requests; return latencies (ms), statuses and the JSON answers."""
    import aiohttp

    base, paths = job["base"], job["paths"]
    mode, connections = job["mode"], int(job["connections"])
    rng = random.Random(job.get("seed", 8))
    if mode == "random":
        order = [rng.choice(paths) for _ in range(int(job["requests"]))]
    else:  # "each": every path once
        order = list(paths)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in order:
        queue.put_nowait(path)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    answers: list[Any] = []
    keep = mode == "each"
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                path = queue.get_nowait()
                started = time.perf_counter()
                try:
                    async with session.get(base + path) as response:
                        body = await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    body, status = b"", type(exc).__name__
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
                if keep:
                    answers.append([path, json.loads(body) if status == "200" else None])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall_s = time.perf_counter() - started
    return {"latencies_ms": latencies, "statuses": statuses, "answers": answers, "wall_s": wall_s}


async def _load(job: dict[str, Any]) -> dict[str, Any]:
    """Run one client job in its own process; return its result."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--client",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    out, _ = await process.communicate(json.dumps(job).encode())
    if process.returncode != 0:
        raise RuntimeError(f"the load client failed with status {process.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


# -- limits -----------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pids_limit() -> str | None:
    """The pids limit of the cgroup this process runs in (v2, else v1), if any is set."""
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            found = _read(f"/sys/fs/cgroup{path}/pids.max")
        elif "pids" in controllers.split(","):
            found = _read(f"/sys/fs/cgroup/pids{path}/pids.max")
        else:
            continue
        if found is not None:
            return found
    return None


def check_limits(activations: int) -> dict[str, Any]:
    """Report the limits that bound N live workers; raise RLIMIT_NOFILE's soft limit to fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = activations * HOST_FDS_PER_WORKER * 2 + FDS_MARGIN
    if soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    sandbox = SandboxSettings(state_dir=Path("/nonexistent"))
    uids = sandbox.last_uid - sandbox.first_uid + 1
    return {
        "nofile_soft_before": soft,
        "nofile_soft": raised,
        "nofile_hard": hard,
        "nofile_needed": needed,
        "pid_max": int(_read("/proc/sys/kernel/pid_max") or 0),
        "cgroup_pids_max": _pids_limit(),
        "uid_pool": f"{sandbox.first_uid}..{sandbox.last_uid}",
        "uid_pool_size": uids,
        "uid_headroom": uids - activations,
        "mem_available_mib": round(psutil.virtual_memory().available / MIB),
        "cpus": os.cpu_count(),
    }


# -- the host ---------------------------------------------------------------------------------


def _trust(state: Path) -> tuple[Path, Path]:
    """Copy the bench plugin into `state` and trust that copy alone; return the two files."""
    bundle = state / "bundles" / "scale_bench"
    shutil.copytree(PLUGIN_DIR, bundle, ignore=shutil.ignore_patterns("__pycache__"))
    checksums = state / "checksums.txt"
    checksums.write_text(f"{tree_digest(bundle)}  {bundle}\n")
    allowlist = state / "allowlist.toml"
    allowlist.write_text(
        f'require_signature = false\n\n[[plugin]]\nid = "{PLUGIN_ID}"\nversions = ">=1.0.0"\n'
    )
    return allowlist, checksums


def _settings(state: Path, idle_s: float) -> ServiceSettings:
    env = {
        "CORRAL_CONFIG_PATH": str(state / "config" / "corral.config.json"),
        "CORRAL_AUDIT_FSYNC": "false",
        "CORRAL_WEBHOOK_RATE_PER_MINUTE": "1000000",
    }
    settings = ServiceSettings.from_env(state, env)
    host = replace(
        settings.host,
        allowlist_path=state / "allowlist.toml",
        checksums_path=state / "checksums.txt",
        shipped_plugins_dir=None,
        watch=WatchSettings(idle_s=idle_s),
    )
    return replace(settings, host=host)


async def _serve(service: Service) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(service.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _tenants(n: int) -> list[str]:
    return [f"tenant-{i:05d}" for i in range(n)]


def _paths(tenants: Sequence[str]) -> list[str]:
    return [f"/webhook/{SLUG}/{tenant}/who" for tenant in tenants]


def _states(service: Service) -> dict[str, int]:
    counts: dict[str, int] = {}
    for activation in service.host.supervisor.statuses():
        for slot in activation.slots:
            counts[str(slot.state)] = counts.get(str(slot.state), 0) + 1
    return counts


def _slot_field(service: Service, name: str) -> list[Any]:
    return [getattr(s, name) for a in service.host.supervisor.statuses() for s in a.slots]


async def _until(check: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - polls the supervisor: there is no event to await
            await asyncio.sleep(0.1)


def _forkserver_pid(service: Service) -> int | None:
    server = service.host.spawner.server
    return server.pid if server is not None else None


def _live_workers(service: Service) -> list[int]:
    """Worker processes alive now: the fork-server's children (it forks nothing else)."""
    pid = _forkserver_pid(service)
    if pid is None:
        return []
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    return [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def _memory(pid: int) -> tuple[float, float, float | None]:
    """RSS, USS and PSS (None if unreadable) of one process, in MiB."""
    info = psutil.Process(pid).memory_full_info()
    pss = getattr(info, "pss", None)
    return info.rss / MIB, info.uss / MIB, pss / MIB if pss is not None else None


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_memory(host_pid: int, forkserver_pid: int | None, workers: list[int]) -> dict[str, Any]:
    """Sum RSS, USS and PSS over the host, the fork-server and the workers (blocks: a thread)."""
    rows: dict[str, list[tuple[float, float, float | None]]] = {"host": [], "fork": [], "w": []}
    rows["host"].append(_memory(host_pid))
    if forkserver_pid is not None:
        rows["fork"].append(_memory(forkserver_pid))
    for pid in workers:
        try:
            rows["w"].append(_memory(pid))
        except psutil.Error:
            continue

    def total(name: str, index: int) -> float | None:
        values = [row[index] for row in rows[name]]
        if any(v is None for v in values):
            return None
        return round(sum(v for v in values if v is not None), 1)

    uss = [row[1] for row in rows["w"]]
    out: dict[str, Any] = {"workers_measured": len(rows["w"])}
    for label, index in (("rss", 0), ("uss", 1), ("pss", 2)):
        parts = [total(name, index) for name in ("host", "fork", "w")]
        out[f"host_{label}_mib"], out[f"forkserver_{label}_mib"], out[f"workers_{label}_mib"] = (
            parts
        )
        known = [p for p in parts if p is not None]
        out[f"total_{label}_mib"] = round(sum(known), 1) if len(known) == 3 else None
    out["worker_uss_mib"] = {
        "median": round(statistics.median(uss), 2) if uss else None,
        "p90": round(_percentile(uss, 0.9), 2) if uss else None,
    }
    return out


async def measure_idle_cpu(pids: list[int], window_s: float) -> dict[str, float]:
    """CPU used by `pids` (host first) over `window_s` with no traffic, as % of one core."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue

    def times() -> list[float]:
        out = []
        for proc in procs:
            try:
                t = proc.cpu_times()
                out.append(t.user + t.system)
            except psutil.Error:
                out.append(0.0)
        return out

    before = await asyncio.to_thread(times)
    await asyncio.sleep(window_s)
    after = await asyncio.to_thread(times)
    used = [b - a for a, b in zip(before, after, strict=True)]
    return {
        "window_s": window_s,
        "host_pct": round(100 * used[0] / window_s, 1),
        "workers_pct": round(100 * sum(used[1:]) / window_s, 1),
    }


def _answered(result: dict[str, Any]) -> int:
    """How many answers came from the worker of the tenant the request was for."""
    good = 0
    for path, body in result["answers"]:
        tenant = path.split("/")[3]
        if isinstance(body, dict) and body.get("tenant") == tenant:
            good += 1
    return good


def _latency(result: dict[str, Any]) -> dict[str, Any]:
    values = result["latencies_ms"]
    return {
        "requests": len(values),
        "statuses": result["statuses"],
        "p50_ms": round(statistics.median(values), 2),
        "p90_ms": round(_percentile(values, 0.90), 2),
        "p99_ms": round(_percentile(values, 0.99), 2),
        "per_s": round(len(values) / result["wall_s"], 1),
    }


# -- the phases -------------------------------------------------------------------------------


async def _activate_all(service: Service, tenants: list[str], parallel: int) -> float:
    """Enable the plugin for every tenant, `parallel` at a time; return the seconds to all ready."""
    gate = asyncio.Semaphore(parallel)

    async def one(tenant: str) -> None:
        async with gate:
            await service.control.set_enabled(tenant, PLUGIN_ID, True)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for tenant in tenants:
            group.create_task(one(tenant))
    mine = set(tenants)

    def all_ready() -> bool:
        return all(
            slot.state is WorkerState.READY
            for activation in service.host.supervisor.statuses()
            if activation.tenant_id in mine
            for slot in activation.slots
        )

    await _until(all_ready)
    return time.perf_counter() - started


async def phase_live(state: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Phase 1: every activation live at once."""
    tenants = _tenants(args.activations)
    service = await Service.start(_settings(state, idle_s=0.0))
    runner, base = await _serve(service)
    try:
        await service.control.host.install(state / "bundles" / "scale_bench")
        fds_before = psutil.Process().num_fds()
        activation_s = await _activate_all(service, tenants, args.parallel)
        live = _live_workers(service)
        fork_pid = _forkserver_pid(service)
        fork_fds = psutil.Process(fork_pid).num_fds() if fork_pid else None
        each = await _load(
            {"base": base, "paths": _paths(tenants), "mode": "each", "connections": 16}
        )
        memory = await asyncio.to_thread(measure_memory, os.getpid(), fork_pid, live)
        cpu = await measure_idle_cpu([os.getpid(), *live], args.idle_window)
        random_load = await _load(
            {
                "base": base,
                "paths": _paths(tenants),
                "mode": "random",
                "requests": args.requests,
                "connections": args.connections,
            }
        )
        restarts = sum(_slot_field(service, "restarts"))
        out["all_live"] = {
            "activation_s": round(activation_s, 2),
            "activations_per_s": round(len(tenants) / activation_s, 1),
            "states": _states(service),
            "live_workers": len(live),
            "answered": _answered(each),
            "restarts": restarts,
            "host_fds_per_worker": round((psutil.Process().num_fds() - fds_before) / len(live), 2)
            if live
            else None,
            "forkserver_fds": fork_fds,
            "memory": memory,
            "idle_cpu": cpu,
            "webhook": _latency(random_load),
            "webhook_first_pass": _latency(each),
        }
    finally:
        await runner.cleanup()
        started = time.perf_counter()
        await service.close()
        out.setdefault("all_live", {})["stop_all_s"] = round(time.perf_counter() - started, 2)


async def phase_idle(state: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Phase 2: restart on the same store with an idle time; all scale to zero, then wake."""
    tenants = _tenants(args.activations)
    started = time.perf_counter()
    service = await Service.start(_settings(state, idle_s=args.idle_seconds))
    runner, base = await _serve(service)
    try:
        seen: set[str] = set()

        def all_started() -> bool:  # every slot has been ready once (it may be idle again)
            for activation in service.host.supervisor.statuses():
                if all(s.state in (WorkerState.READY, WorkerState.IDLE) for s in activation.slots):
                    seen.add(activation.tenant_id)
            return len(seen) == len(tenants)

        await _until(all_started)
        restore_s = time.perf_counter() - started
        peak = len(_live_workers(service))
        await _until(lambda: _states(service).get(WorkerState.IDLE, 0) == len(tenants))
        await _until(lambda: not _live_workers(service), timeout_s=60)
        live_after = _live_workers(service)
        sample = random.Random(8).sample(tenants, min(args.wake_sample, len(tenants)))
        wake = await _load(
            {"base": base, "paths": _paths(sample), "mode": "each", "connections": 1}
        )
        restarts = sum(_slot_field(service, "restarts"))
        out["scale_to_zero"] = {
            "idle_s": args.idle_seconds,
            "restore_s": round(restore_s, 2),
            "live_workers_seen_after_restore": peak,
            "live_workers_after_idle": len(live_after),
            "states_after_idle": {WorkerState.IDLE.value: len(tenants)},
            "first_call": _latency(wake) | {"answered": _answered(wake)},
            "restarts": restarts,
            "states_after_wake": _states(service),
        }
    finally:
        await runner.cleanup()
        await service.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both phases over one temporary state directory; return the document."""
    out: dict[str, Any] = {
        "activations": args.activations,
        "target_activations": TARGET_ACTIVATIONS,
        "limits": check_limits(args.activations),
        "python": sys.version.split()[0],
    }
    state = Path(tempfile.mkdtemp(prefix="corral-scale-", dir="/tmp"))
    os.chmod(state, 0o755)
    try:
        await asyncio.to_thread(_trust, state)
        await phase_live(state, args, out)
        await phase_idle(state, args, out)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return out


def report(doc: dict[str, Any]) -> str:
    """Render the document for a terminal."""
    live, idle, limits = doc["all_live"], doc["scale_to_zero"], doc["limits"]
    mem, hook, first = live["memory"], live["webhook"], idle["first_call"]
    n = doc["activations"]
    lines = [
        f"scale: {n} activations of {PLUGIN_ID}, Python {doc['python']}, {limits['cpus']} cores",
        f"limits: nofile {limits['nofile_soft_before']} -> {limits['nofile_soft']} "
        f"(need {limits['nofile_needed']}), pid_max {limits['pid_max']}, cgroup pids.max "
        f"{limits['cgroup_pids_max']}, uid pool {limits['uid_pool']} "
        f"({limits['uid_headroom']} spare)",
        "",
        f"all live: {live['live_workers']} workers, {live['answered']}/{n} answered as "
        f"themselves, {live['restarts']} restarts; activated in {live['activation_s']} s "
        f"({live['activations_per_s']}/s); stopped in {live['stop_all_s']} s",
        f"  memory MiB   RSS {mem['total_rss_mib']}  USS {mem['total_uss_mib']}  "
        f"PSS {mem['total_pss_mib']}  (host RSS {mem['host_rss_mib']}, fork-server RSS "
        f"{mem['forkserver_rss_mib']}, workers RSS {mem['workers_rss_mib']} / USS "
        f"{mem['workers_uss_mib']} / PSS {mem['workers_pss_mib']})",
        f"  per worker USS MiB  median {mem['worker_uss_mib']['median']}  "
        f"p90 {mem['worker_uss_mib']['p90']}",
        f"  fds: host {live['host_fds_per_worker']} per worker, fork-server "
        f"{live['forkserver_fds']} in all",
        f"  CPU with no traffic over {live['idle_cpu']['window_s']} s: host "
        f"{live['idle_cpu']['host_pct']}%, workers {live['idle_cpu']['workers_pct']}% of a core",
        f"  webhook, random tenant: {hook['requests']} requests, p50 {hook['p50_ms']} ms, "
        f"p99 {hook['p99_ms']} ms, {hook['per_s']}/s, statuses {hook['statuses']}",
        "",
        f"scale to zero (idle {idle['idle_s']} s): restored in {idle['restore_s']} s; "
        f"{idle['live_workers_after_idle']} live workers after the idle time; "
        f"{idle['restarts']} restarts",
        f"  first call after an idle stop: median {first['p50_ms']} ms, p90 {first['p90_ms']} "
        f"ms over {first['requests']} tenants ({first['answered']} answered)",
        "",
        f"target: all {TARGET_ACTIVATIONS} live at once, each answering: "
        + (
            "met"
            if n >= TARGET_ACTIVATIONS and live["answered"] == n == live["live_workers"]
            else "not met in this run"
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", type=int, default=TARGET_ACTIVATIONS)
    parser.add_argument("--quick", action="store_true", help="20 activations, small samples")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--parallel", type=int, default=16, help="activations in flight")
    parser.add_argument("--requests", type=int, default=2000, help="random-tenant webhooks")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--idle-window", type=float, default=10.0, help="CPU window, s")
    parser.add_argument("--wake-sample", type=int, default=50, help="first calls timed")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(asyncio.run(_client(json.load(sys.stdin)))))
        return 0
    if args.quick:
        args.activations, args.requests, args.wake_sample = 20, 200, 10
        args.idle_seconds, args.idle_window = min(args.idle_seconds, 1.0), 1.0
    doc = asyncio.run(run(args))
    print(json.dumps(doc, indent=2) if args.json else report(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
