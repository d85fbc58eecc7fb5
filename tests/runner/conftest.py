"""Real sandboxed workers for host tests: a state dir, the probe, a fork-server spawner."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from runner.launcher import WorkerLauncher
from runner.sandboxing import SandboxSettings, WorkerSandbox
from runner.spawn import ForkServerSpawner

FIXTURES = Path(__file__).parents[1] / "fixtures" / "plugins"


@pytest.fixture
async def launcher() -> AsyncIterator[WorkerLauncher]:
    """A launcher over the real sandbox and a fork-server; checks that nothing is left behind."""
    state = Path(tempfile.mkdtemp(prefix="corral-test-", dir="/tmp"))
    os.chmod(state, 0o755)
    sandbox = await WorkerSandbox.open(SandboxSettings(state_dir=state))
    spawner = ForkServerSpawner(sys_path=sandbox.sys_path)
    try:
        yield WorkerLauncher(sandbox, spawner)
    finally:
        await spawner.close()
        sandbox.close()
        scratch = state / "scratch"
        leftovers = list(scratch.iterdir()) if scratch.exists() else []
        shutil.rmtree(state, ignore_errors=True)
        children = [c for c in psutil.Process().children(recursive=True) if c.is_running()]
        assert leftovers == [], "scratch directories left behind"
        assert [c.pid for c in children if c.status() != psutil.STATUS_ZOMBIE] == []
