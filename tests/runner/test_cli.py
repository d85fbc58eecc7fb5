from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest

from runner.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "plugins"


def test_plugins_list_validates_the_shipped_bundles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {p["id"] for p in listed["plugins"]} >= {
        "dev.corral.twilio-sms",
        "dev.corral.phaxio-fax",
    }
    assert listed["invalid"] == []


def test_plugins_list_exits_non_zero_and_names_an_invalid_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(FIXTURES / "echo", tmp_path / "echo")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "plugin.toml").write_text('id = "x"\n')
    assert main(["plugins", "list", "--plugins-dir", str(tmp_path), "--json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in listed["plugins"]] == ["dev.corral.test.echo"]
    assert listed["invalid"][0]["path"].endswith("bad")


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "serve" in capsys.readouterr().out


async def test_serve_starts_serves_the_admin_api_and_stops_cleanly_on_sigterm() -> None:
    state = Path(tempfile.mkdtemp(prefix="corral-serve-", dir="/tmp"))
    os.chmod(state, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CORRAL_CONFIG_PATH": str(state / "config" / "corral.config.json")}
    serve = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.cli",
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{base}/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            key = (state / "bootstrap-key").read_text().strip()
            async with http.get(f"{base}/plugins", headers={"X-API-Key": key}) as answer:
                listing = await answer.json()
            async with http.get(f"{base}/plugins") as anonymous:
                assert anonymous.status == 401
        serve.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(serve.communicate(), 30)
        assert serve.returncode == 0
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
        shutil.rmtree(state, ignore_errors=True)
    twilio = next(p for p in listing["plugins"] if p["id"] == "dev.corral.twilio-sms")
    assert twilio["settings_schema"]["properties"]["auth_token"]["writeOnly"] is True
    assert key not in stderr.decode()  # the bootstrap key is never printed or logged


def test_sandbox_doctor_reports_every_layer_and_strict_readiness(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["sandbox", "doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    layers = {row["layer"]: row for row in report["layers"]}
    assert {"rlimits", "namespaces", "landlock", "seccomp", "pdeathsig"} <= set(layers)
    assert status == (0 if report["strict_ready"] else 1)
    # Where the kernel offers a layer, the doctor must say so (this machine offers them all).
    for name in ("namespaces", "landlock", "seccomp"):
        assert layers[name]["available"], layers[name]["detail"]
