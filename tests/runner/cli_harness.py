"""Run the real `corral` command for CLI tests: in a subprocess, on a terminal, or as a daemon.

Every run gets an environment of its own (no `CORRAL_*` variable of the caller leaks in) naming a
temp state dir and config document, so the CLI and `corral serve` open the same files.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
CORRAL = [sys.executable, "-m", "runner.cli"]


def corral_env(state: Path, **extra: str) -> dict[str, str]:
    """Return an environment naming `state` and `<state>/config/corral.config.json` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "FAXBOT_"))}
    env.update(
        CORRAL_STATE_DIR=str(state),
        CORRAL_CONFIG_PATH=str(state / "config" / "corral.config.json"),
        CORRAL_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def set_corral_env(monkeypatch: Any, state: Path) -> None:
    """Make the test process's environment `corral_env(state)` (for in-process `main`)."""
    for name in [k for k in os.environ if k.startswith(("CORRAL_", "FAXBOT_"))]:
        monkeypatch.delenv(name)
    for name, value in corral_env(state).items():
        if name.startswith("CORRAL_"):
            monkeypatch.setenv(name, value)


@dataclass
class Result:
    """What a `corral` run printed, and its exit status."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        """Return stdout as the one JSON document it must be."""
        return json.loads(self.out)


def run_corral(args: Sequence[str], env: dict[str, str]) -> Result:
    """Run `corral ARGS` in a subprocess, stderr a pipe (not a terminal)."""
    done = subprocess.run(
        [*CORRAL, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    return Result(done.returncode, done.stdout, done.stderr)


async def arun_corral(args: Sequence[str], env: dict[str, str]) -> Result:
    """Run `corral ARGS` in a subprocess without blocking the test's event loop."""
    process = await asyncio.create_subprocess_exec(
        *CORRAL, *args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def run_on_terminal(args: Sequence[str], env: dict[str, str]) -> Result:
    """Run `corral ARGS` with stderr on a pseudo-terminal (stdout stays a pipe)."""
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            [*CORRAL, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=secondary
        )
    finally:
        os.close(secondary)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert process.stdout is not None
        out = process.stdout.read().decode()
        process.stdout.close()
        status = process.wait(timeout=60)
    finally:
        os.close(primary)
    return Result(status, out, b"".join(chunks).decode().replace("\r\n", "\n"))


def temp_state() -> Path:
    """Return a fresh state dir that sandboxed worker uids can traverse (not under a 0700 dir)."""
    state = Path(tempfile.mkdtemp(prefix="corral-cli-", dir="/tmp"))
    os.chmod(state, 0o755)
    return state


@dataclass
class Daemon:
    """A running `corral serve`: its base URL and the bootstrap key it generated."""

    base: str
    bootstrap_key: str
    process: asyncio.subprocess.Process


@asynccontextmanager
async def serving(state: Path, env: dict[str, str]) -> AsyncIterator[Daemon]:
    """Run `corral serve` on a free port over `state` until the block ends; then SIGTERM it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        *CORRAL,
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        env=env,
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert process.returncode is None, "corral serve exited"
                try:
                    async with http.get(f"{base}/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        key = (state / "bootstrap-key").read_text().strip()
        yield Daemon(base, key, process)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def remove_state(state: Path) -> None:
    """Remove a state dir, store entries (sealed read-only) included."""
    for root, dirs, _ in os.walk(state):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    shutil.rmtree(state, ignore_errors=True)
