"""Real worker processes started with `sys.executable`, unconfined (the sandbox tests confine)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest

from runner.spawn import ColdSpawner, unconfined
from runner.worker import PluginWorker, WorkerSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "plugins"
ECHO_ID = "dev.corral.test.echo"

StartWorker = Callable[..., Coroutine[Any, Any, PluginWorker]]


def echo_spec(bundle: Path = FIXTURES / "echo", **overrides: Any) -> WorkerSpec:
    fields: dict[str, Any] = {
        "plugin_id": ECHO_ID,
        "tenant_id": "tenant-a",
        "launch": unconfined(str(bundle), {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}),
    }
    fields.update(overrides)
    return WorkerSpec(**fields)


@pytest.fixture
async def start_worker() -> AsyncIterator[StartWorker]:
    """Start workers; every one is killed and reaped after the test, and none may be left."""
    started: list[PluginWorker] = []

    async def start(spec: WorkerSpec | None = None) -> PluginWorker:
        worker = await PluginWorker.start(spec or echo_spec(), ColdSpawner())
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.kill()
    children = psutil.Process().children(recursive=True)
    assert [c for c in children if c.status() != psutil.STATUS_ZOMBIE] == []
    assert [c for c in children if c.status() == psutil.STATUS_ZOMBIE] == []
