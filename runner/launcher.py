"""Start confined workers: prepare their confinement, spawn them, and hand back a `PluginWorker`.

This is the one place that turns (tenant, plugin, bundle, config) into a running, sandboxed worker;
the supervisor decides when.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from protocol import Limits
from protocol.endpoint import Handler

from .sandboxing import WorkerSandbox
from .spawn import LaunchRequest, Spawner
from .worker import PluginWorker, WorkerSpec


def _unchanged(text: str) -> str:
    return text


class WorkerLauncher:
    """Start workers of any (tenant, plugin) under the sandbox, through one spawner."""

    def __init__(self, sandbox: WorkerSandbox, spawner: Spawner) -> None:
        self.sandbox = sandbox
        self.spawner = spawner

    async def start(
        self,
        *,
        plugin_id: str,
        tenant_id: str,
        bundle_dir: Path,
        config: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        start_timeout_s: float = 10.0,
        host_functions: Mapping[str, Handler] | None = None,
        config_digest: str = "",
        scrub: Callable[[str], str] | None = None,
    ) -> PluginWorker:
        """Start one confined worker; raise WorkerStartError if it does not come up.

        Its scratch directory, uid and cgroup are released when it stops or fails to start.
        `scrub` masks the activation's secrets in every stderr line the host keeps or re-logs.
        """
        confinement = await self.sandbox.confine(
            plugin_id=plugin_id, tenant_id=tenant_id, bundle_dir=bundle_dir
        )
        env = {"CORRAL_LOG_LEVEL": os.environ.get("CORRAL_WORKER_LOG_LEVEL", "INFO")}
        if os.environ.get("CORRAL_UVLOOP") == "0":
            env["CORRAL_UVLOOP"] = "0"
        request = LaunchRequest(
            entry_args=(str(confinement.bundle_dir),), env=env, policy=confinement.policy
        )
        spec = WorkerSpec(
            plugin_id=plugin_id,
            tenant_id=tenant_id,
            launch=request,
            config=dict(config or {}),
            limits=limits or Limits(),
            start_timeout_s=start_timeout_s,
            config_digest=config_digest,
            scrub=scrub or _unchanged,
        )
        return await PluginWorker.start(
            spec, self.spawner, host_functions=host_functions, on_release=confinement.release
        )
