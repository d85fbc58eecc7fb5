"""A real `corral serve` subprocess for daemon tests: temp state, free port, stderr collected.

The operator's trust files live in the state dir (`CORRAL_ALLOWLIST_PATH`, `CORRAL_CHECKSUMS_PATH`)
and trust the shipped plugins plus `slowhooks`, a webhook fixture written here that sleeps for as
many seconds as its body says and then answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from tests.fixtures.install.builders import checksum_of

REPO = Path(__file__).resolve().parents[2]
SLOW = "dev.corral.test.slowhooks"
SLOW_MANIFEST = f"""id = "{SLOW}"
version = "1.0.0"
display_name = "Slow hooks (daemon test)"
protocol_version = 1
slug = "slowhooks"
entrypoint = "slowhooks"

[[categories]]
kind = "webhook_handler"

[[webhook]]
route_id = "sleep"
path = "/sleep"
methods = ["POST"]
verify = "plugin"
max_body_bytes = 64
timeout_seconds = 300
"""
SLOW_CODE = '''"""Sleep for the number of seconds the body names, then answer 200."""

import asyncio

from plugins.sdk import Plugin
from plugins.sdk.categories import WebhookRequest, WebhookResponse

plugin = Plugin()


@plugin.category("webhook_handler")
class Slow:
    def __init__(self, ctx: object) -> None:
        pass

    async def handle(self, request: WebhookRequest) -> WebhookResponse:
        await asyncio.sleep(float(request.body.decode()))
        return WebhookResponse(status=200, headers={"Content-Type": "text/plain"}, body=b"slept")
'''


def free_port() -> int:
    """Return a port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_state() -> Path:
    """Return a fresh state dir with trust files and the slowhooks bundle (under `bundles/`)."""
    state = Path(tempfile.mkdtemp(prefix="corral-daemon-", dir="/tmp"))
    os.chmod(state, 0o755)
    bundle = state / "bundles" / "slowhooks"
    bundle.mkdir(parents=True)
    (bundle / "plugin.toml").write_text(SLOW_MANIFEST)
    (bundle / "slowhooks.py").write_text(SLOW_CODE)
    shipped = [p for p in (REPO / "plugins").iterdir() if (p / "plugin.toml").is_file()]
    lines = [f"{checksum_of(path)}  {path}\n" for path in (*shipped, bundle)]
    (state / "checksums.txt").write_text("".join(lines))
    allowlist = (REPO / "allowlist.toml").read_text()
    allowlist += f'\n[[plugin]]\nid = "{SLOW}"\nversions = ">=1.0.0"\n'
    (state / "allowlist.toml").write_text(allowlist)
    return state


@dataclass
class Daemon:
    """The running daemon: its process, where it serves, its state dir, and its stderr so far."""

    process: asyncio.subprocess.Process
    base: str
    state: Path
    stderr: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The bootstrap API key the daemon generated."""
        return (self.state / "bootstrap-key").read_text().strip()

    def descendants(self) -> list[psutil.Process]:
        """Every process below the daemon (fork-server, workers)."""
        return psutil.Process(self.process.pid).children(recursive=True)

    async def exit_status(self, timeout_s: float = 60) -> int:
        """Wait (bounded) for the daemon to exit and return its status."""
        return await asyncio.wait_for(self.process.wait(), timeout_s)


def daemon_env(state: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a test daemon over `state`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "NOTIFY_", "WATCHDOG"))
    }
    env.update(
        {
            "CORRAL_CONFIG_PATH": str(state / "config" / "corral.config.json"),
            "CORRAL_AUDIT_FSYNC": "false",
            "CORRAL_ALLOWLIST_PATH": str(state / "allowlist.toml"),
            "CORRAL_CHECKSUMS_PATH": str(state / "checksums.txt"),
            "CORRAL_STATE_DIR": str(state),
        }
    )
    env.update(extra or {})
    return env


@asynccontextmanager
async def running_daemon(
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    scheme: str = "http",
) -> AsyncIterator[Daemon]:
    """Start `corral serve` over a fresh state dir; kill it (and its children) at the end."""
    state = make_state()
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.cli",
        "serve",
        "--port",
        str(port),
        *args,
        env=daemon_env(state, env),
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    daemon = Daemon(process, f"{scheme}://127.0.0.1:{port}", state)
    reader = asyncio.create_task(_collect(process, daemon.stderr))
    try:
        yield daemon
    finally:
        if process.returncode is None:
            with contextlib.suppress(psutil.Error):
                for child in daemon.descendants():
                    child.kill()
            process.kill()
            await process.wait()
        await asyncio.wait_for(reader, 10)
        shutil.rmtree(state, ignore_errors=True)


async def _collect(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stderr is not None
    async for line in process.stderr:
        lines.append(line.decode(errors="replace"))


async def wait_ready(
    daemon: Daemon, ssl_context: ssl.SSLContext | bool = True, attempts: int = 300
) -> None:
    """Poll /readyz until it answers 200; fail with the daemon's stderr if it never does."""
    connector = aiohttp.TCPConnector(ssl=ssl_context)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(attempts):
            if daemon.process.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{daemon.base}/readyz") as ready:
                    if ready.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError("the daemon never became ready:\n" + "".join(daemon.stderr))


async def stop(daemon: Daemon, sig: int = signal.SIGTERM) -> int:
    """Send `sig` and return the exit status."""
    daemon.process.send_signal(sig)
    return await daemon.exit_status()
