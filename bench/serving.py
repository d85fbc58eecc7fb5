"""What the HTTP benchmarks share: server children, the trusted bench bundle, wrk runs.

`bench/webhook.py` and `bench/scale_out.py` start `corral serve` (and other servers) as child
processes, trust a copy of `bench/plugins/webhook_bench` next to the shipped plugins, install
and activate it through the admin API, and drive it with wrk, whose Lua `done` hook prints one
`WRKJSON {...}` line that `run_wrk` returns.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
BUNDLE: Final = Path(__file__).resolve().parent / "plugins" / "webhook_bench"
PLUGIN_ID: Final = "dev.corral.bench.webhook"
TENANT: Final = "bench"
STOP_TIMEOUT_S: Final = 30.0


@dataclass
class Child:
    """A server child: its process, port, and where its log goes."""

    process: asyncio.subprocess.Process
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; always reap."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def copy_bundle(work: Path) -> Path:
    """Copy the bench bundle into `work` (a copy may be edited); return the copy."""
    bundle = work / "webhook_bench"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("__pycache__"))
    return bundle


def trust(bundle: Path, into: Path) -> None:
    """Write `checksums.txt` and `allowlist.toml` into `into`: the shipped plugins and `bundle`.

    Point `CORRAL_CHECKSUMS_PATH` and `CORRAL_ALLOWLIST_PATH` at them; the repository's own
    files stay untouched.
    """
    from runner.checksums import bundle_checksum, checksum_line, load_checksums

    shipped = load_checksums(ROOT / "checksums.txt")
    lines = [checksum_line(e.sha256, str(shipped.base_dir / e.name)) for e in shipped.entries]
    lines.append(checksum_line(bundle_checksum(bundle), str(bundle)))
    (into / "checksums.txt").write_text("".join(line + "\n" for line in lines))
    allowlist = (ROOT / "allowlist.toml").read_text()
    allowlist += f'\n[[plugin]]\nid = "{PLUGIN_ID}"\nversions = ">=1.0.0,<2.0.0"\n'
    (into / "allowlist.toml").write_text(allowlist)


async def activate(host: Child, key: str, bundle: Path, secret: str) -> None:
    """Install `bundle` and activate it for the bench tenant with `secret`, via the admin API."""
    import aiohttp

    headers = {"X-API-Key": key}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.post(
            host.url("/api/v1/admin/plugins"), json={"path": str(bundle)}, headers=headers
        ) as answer:
            if answer.status != 201:
                raise RuntimeError(f"install answered {answer.status}: {await answer.text()}")
        config = {"enabled": True, "settings": {"secret": secret}}
        async with http.put(
            host.url(f"/plugins/{PLUGIN_ID}/config?tenant_id={TENANT}"),
            json=config,
            headers=headers,
        ) as answer:
            if answer.status != 200:
                raise RuntimeError(f"activation answered {answer.status}: {await answer.text()}")


async def run_wrk(
    wrk: str, url: str, script: Path, *, threads: int, connections: int, seconds: int
) -> dict[str, Any]:
    """Run wrk against `url` for `seconds`; return what its `done` hook reported."""
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    argv += ["--timeout", "10s", "-s", str(script), url]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(seconds + 60):
        out, err = await process.communicate()
    match = re.search(rb"^WRKJSON (.*)$", out, re.MULTILINE)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.decode()[-500:]}")
    result: dict[str, Any] = json.loads(match.group(1))
    return result
