"""Host logs: `corral serve` run as a process with stderr piped writes JSON lines with context and
never a secret; `CORRAL_LOG_FORMAT=text` gives readable lines; the formatters and the context."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from runner.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    current_log_context,
    log_context,
)

TWILIO = "dev.corral.twilio-sms"
TENANT = "tenant-logs"
CONFIG_SECRET = "config-secret-" + "7" * 20
BODY_SECRET = "body-secret-" + "9" * 20
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
REPO = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"corral \d+\.\d+\.\d+: https?://")  # the daemon's start-up announcement


@dataclass
class Daemon:
    base: str
    key: str
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)


@asynccontextmanager
async def serving(environ: Mapping[str, str]) -> AsyncIterator[Daemon]:
    """Run `corral serve` with stderr piped (read all along) until the block ends; SIGTERM."""
    state = Path(tempfile.mkdtemp(prefix="corral-logs-", dir="/tmp"))
    os.chmod(state, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CORRAL_LOG")},
        "CORRAL_CONFIG_PATH": str(state / "config" / "corral.config.json"),
        **environ,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.cli",
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    daemon = Daemon(f"http://127.0.0.1:{port}", "", process)
    reader = asyncio.get_running_loop().create_task(_read_lines(process, daemon.lines))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"{daemon.base}/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        daemon.key = (state / "bootstrap-key").read_text().strip()
        yield daemon
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
            await reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()  # a no-op once it has read to the end
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        shutil.rmtree(state, ignore_errors=True)


async def _read_lines(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stderr is not None
    async for raw in process.stderr:
        lines.append(raw.decode().rstrip("\n"))


async def _requests(daemon: Daemon) -> None:
    headers = {"X-API-Key": daemon.key}
    async with aiohttp.ClientSession(base_url=daemon.base) as http:
        settings = {
            "account_sid": "AC" + "0" * 32,
            "auth_token": CONFIG_SECRET,
            "from_number": "+15550001111",
        }
        async with http.put(
            f"/plugins/{TWILIO}/config?tenant_id={TENANT}",
            json={"enabled": True, "settings": settings},
            headers={**headers, "X-Request-ID": "trace-config-put"},
        ) as put:
            assert put.status == 200, await put.text()
        async with http.post(
            "/api/v1/admin/keys",
            json={"name": "k", "scopes": ["nonsense"], "password": BODY_SECRET},
            headers=headers,
        ) as refused:
            assert refused.status == 422
        async with http.post(
            f"/webhook/twilio/{TENANT}/sms-status",
            data={"Body": BODY_SECRET, "MessageStatus": "delivered"},
        ) as unsigned:
            assert unsigned.status == 401


async def test_serve_logs_json_lines_with_context_and_never_a_secret() -> None:
    async with serving({}) as daemon:
        await _requests(daemon)
    text = "\n".join(daemon.lines)
    for secret in (CONFIG_SECRET, BODY_SECRET, daemon.key):
        assert secret not in text
    records = []
    for line in daemon.lines:
        record = json.loads(line)  # every line, the start-up announcement included
        assert RFC3339_UTC.fullmatch(record["time"]), line
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert isinstance(record["event"], str) and isinstance(record["logger"], str), line
        records.append(record)
    assert any(BANNER.match(r["event"]) for r in records)
    put = next(r for r in records if r.get("request_id") == "trace-config-put")
    assert put["logger"] == "runner.middleware" and put["tenant"] == TENANT
    relayed = [r for r in records if r["logger"] == "runner.worker" and "serving" in r["event"]]
    assert relayed, "the worker's own log line was not relayed"
    assert relayed[0]["tenant"] == TENANT and relayed[0]["plugin"] == TWILIO
    assert isinstance(relayed[0]["worker_pid"], int) and "request_id" not in relayed[0]
    refused = [r for r in records if r["logger"] == "runner.webhooks"]
    assert refused and refused[0]["plugin"] == TWILIO and refused[0]["tenant"] == TENANT


async def test_corral_logs_readable_text_on_request(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CORRAL_LOG")},
        "CORRAL_LOG_FORMAT": "text",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.cli",
        "plugins",
        "install",
        str(REPO / "plugins" / "twilio_sms"),
        "--store",
        str(tmp_path / "store"),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    lines = stderr.decode().splitlines()
    assert lines and all(not line.startswith("{") for line in lines)
    installed = next(line for line in lines if "installed plugin" in line)
    assert re.fullmatch(
        RFC3339_UTC.pattern + r" INFO +runner\.install: installed plugin .+", installed
    )


def _record(message: str, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("corral.test")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None, extra=extra)


def test_extras_are_kept_and_secrets_masked_at_any_depth() -> None:
    record = _record(
        "sent",
        status=201,
        api_key="k-1",
        client_secret="s-1",
        raw_body=b"phi",
        provider={"Authorization": "Basic x", "host": "api.example", "items": [{"token": "t"}]},
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "sent" and line["status"] == 201
    assert line["api_key"] == line["client_secret"] == line["raw_body"] == "***"
    assert line["provider"] == {
        "Authorization": "***",
        "host": "api.example",
        "items": [{"token": "***"}],
    }


async def test_context_follows_tasks_created_inside_and_is_reset_after() -> None:
    async def seen() -> dict[str, Any]:
        return json.loads(JsonFormatter().format(_record("x", plugin_id="p")))

    with log_context(request_id="r-1", tenant="acme"):
        task = asyncio.get_running_loop().create_task(seen())
        with log_context(worker_pid=7, request_id=None):
            inner = await seen()
    outer = await task
    assert (outer["request_id"], outer["tenant"], outer["plugin"]) == ("r-1", "acme", "p")
    assert "worker_pid" not in outer
    assert inner["worker_pid"] == 7 and "request_id" not in inner
    assert dict(current_log_context().items()) == {}


def test_text_lines_are_one_line_with_context() -> None:
    with log_context(tenant="acme"):
        line = TextFormatter().format(_record("hello", count=2, token="t"))
    assert RFC3339_UTC.match(line)
    assert line.endswith("INFO    corral.test: hello  tenant=acme count=2 token=***")


def test_configure_logging_chooses_by_terminal_and_warns_on_unknown_values() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        chosen = configure_logging(
            environ={"CORRAL_LOG_FORMAT": "yaml", "CORRAL_LOG_LEVEL": "loud"},
            stream=stream,
            force=True,
        )
        assert chosen == "json" and root.level == logging.INFO  # a StringIO is no terminal
        problems = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
        assert any("CORRAL_LOG_FORMAT" in p for p in problems)
        assert any("CORRAL_LOG_LEVEL" in p for p in problems)
        assert configure_logging("text", "debug", stream=stream, force=True) == "text"
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
