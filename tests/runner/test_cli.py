from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from runner.app import build_app
from runner.cli import main
from runner.host import Host, HostSettings

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


async def test_the_app_serves_health_and_the_verified_plugins() -> None:
    state = Path(tempfile.mkdtemp(prefix="corral-app-", dir="/tmp"))
    os.chmod(state, 0o755)
    host = await Host.start(HostSettings(state_dir=state))
    try:
        async with TestClient(TestServer(build_app(host))) as client:
            health = await client.get("/healthz")
            assert health.status == 200 and await health.json() == {"status": "ok"}
            listing = await (await client.get("/plugins")).json()
    finally:
        await host.close()
        shutil.rmtree(state, ignore_errors=True)
    ids = {p["id"] for p in listing["plugins"]}
    assert "dev.corral.twilio-sms" in ids
    twilio = next(p for p in listing["plugins"] if p["id"] == "dev.corral.twilio-sms")
    assert twilio["settings_schema"]["properties"]["auth_token"]["writeOnly"] is True


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
