"""A throw-away host for the SIGKILL test: it starts confined workers, reports them, then waits.

Run as ``python host_process.py <state-dir> <bundle-dir> <forked> <cold>``. It opens a
`WorkerSandbox` in `<state-dir>`, starts `<forked>` workers through a `ForkServerSpawner` and
`<cold>` through a `ColdSpawner`, checks each answers, prints one JSON line on stdout
(``{"host", "fork_server", "forked", "cold", "cgroups", "pdeathsig_attempts"}``) and sleeps
until it is killed. Before that, every worker tries to shed its parent-death signal.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.categories.input_validator import ValidationInput, ValidationResult
from runner.launcher import WorkerLauncher
from runner.sandboxing import SandboxSettings, WorkerSandbox
from runner.spawn import ColdSpawner, ForkServerSpawner
from runner.worker import PluginWorker

PLUGIN_ID = "dev.corral.test.hostile"
UIDS = (63500, 63999)  # apart from the default pool and from the suite's own hosts


async def _start(
    launcher: WorkerLauncher, bundle: Path, count: int, tag: str, attempts: list[str]
) -> list[int]:
    """Start `count` workers; each first tries to shed its parent-death signal."""
    pids = []
    for index in range(count):
        worker: PluginWorker = await launcher.start(
            plugin_id=PLUGIN_ID, tenant_id=f"{tag}-{index}", bundle_dir=bundle
        )
        result: ValidationResult = await worker.call(
            "input_validator.validate",
            ValidationInput(field="pdeathsig", value={}),
            timeout_s=5,
            result_type=ValidationResult,
        )
        attempts += result.errors
        pids.append(worker.pid)
    return pids


async def main(state_dir: Path, bundle: Path, forked: int, cold: int) -> None:
    sandbox = await WorkerSandbox.open(
        SandboxSettings(state_dir=state_dir, first_uid=UIDS[0], last_uid=UIDS[1])
    )
    fork_spawner = ForkServerSpawner(sys_path=sandbox.sys_path)
    attempts: list[str] = []
    forked_pids = await _start(
        WorkerLauncher(sandbox, fork_spawner), bundle, forked, "forked", attempts
    )
    cold_pids = await _start(WorkerLauncher(sandbox, ColdSpawner()), bundle, cold, "cold", attempts)
    server = fork_spawner.server
    report = {
        "host": os.getpid(),
        "fork_server": server.pid if server is not None else None,
        "forked": forked_pids,
        "cold": cold_pids,
        "cgroups": list(sandbox.report.cgroups.parents),
        "pdeathsig_attempts": attempts,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)


if __name__ == "__main__":
    directory, bundle_dir, forked_count, cold_count = sys.argv[1:5]
    asyncio.run(main(Path(directory), Path(bundle_dir), int(forked_count), int(cold_count)))
