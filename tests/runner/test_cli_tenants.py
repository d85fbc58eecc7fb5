"""`corral tenants list|show|activate|deactivate` on a real config store and plugin store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from runner.cli import main
from runner.config_model import ConfigDocument
from runner.config_settings import ConfigSettings
from runner.config_store import JsonConfigStore
from tests.runner.cli_harness import (
    REPO,
    arun_corral,
    corral_env,
    remove_state,
    serving,
    set_corral_env,
    temp_state,
)

TWILIO = "dev.corral.twilio-sms"
OTHER = "dev.corral.not-installed"
TOKEN = "tok-very-secret-0123456789"
SETTINGS = {"account_sid": "AC" + "0" * 32, "auth_token": TOKEN, "from_number": "+15551234567"}


def _secret_fields(plugin_id: str) -> frozenset[str]:
    return frozenset({"auth_token"} if plugin_id == TWILIO else {"api_key"})


async def _write_settings(config_path: Path) -> None:
    """Store acme's settings as the admin API would: secrets encrypted by the store."""
    store = await JsonConfigStore.open(
        ConfigSettings(path=config_path), secret_fields=_secret_fields
    )

    def write(doc: ConfigDocument) -> ConfigDocument:
        settings = doc.tenant("acme").settings
        settings.plugins[TWILIO] = dict(SETTINGS)
        settings.plugins[OTHER] = {"api_key": "other-secret-value", "region": "eu"}
        settings.colour = "teal"  # the tenant's own (free-form) setting
        doc.tenant("bare")
        return doc

    await store.update(write)


def _install_twilio(state: Path) -> None:
    bundle = str(REPO / "plugins" / "twilio_sms")
    assert main(["plugins", "install", bundle, "--store", str(state / "store")]) == 0


def test_show_masks_secrets_and_activate_writes_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_corral_env(monkeypatch, tmp_path)
    assert main(["tenants", "list", "--json"]) == 2  # no document: nothing to list
    _install_twilio(tmp_path)
    asyncio.run(_write_settings(tmp_path / "config" / "corral.config.json"))
    capsys.readouterr()

    assert main(["tenants", "show", "acme", "--json"]) == 0
    shown = capsys.readouterr().out
    assert TOKEN not in shown and "other-secret-value" not in shown
    settings = json.loads(shown)["settings"]
    assert settings["colour"] == "teal"
    assert settings["plugins"][TWILIO] == {**SETTINGS, "auth_token": "***"}
    assert settings["plugins"][OTHER] == {"api_key": "***", "region": "eu"}  # stored encrypted
    assert main(["tenants", "show", "acme"]) == 0
    assert TOKEN not in capsys.readouterr().out
    assert main(["tenants", "show", "nobody", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "not_found"

    assert main(["tenants", "activate", "acme", TWILIO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "tenant_id": "acme",
        "plugin_id": TWILIO,
        "enabled": True,
        "changed": True,
    }
    assert main(["tenants", "activate", "acme", TWILIO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert main(["tenants", "deactivate", "acme", TWILIO]) == 0
    assert "SIGHUP" in capsys.readouterr().out  # says when a running daemon applies it

    assert main(["tenants", "list", "--json"]) == 0
    tenants = {t["id"]: t for t in json.loads(capsys.readouterr().out)["tenants"]}
    assert set(tenants) == {"acme", "bare"}
    [activation] = tenants["acme"]["activations"]
    assert (activation["plugin_id"], activation["enabled"]) == (TWILIO, False)
    assert tenants["acme"]["configured"] == sorted([TWILIO, OTHER])

    audit = [
        json.loads(line) for line in (tmp_path / "audit" / "audit.log").read_text().splitlines()
    ]
    acts = [
        (e["action"], e["tenant"], e["target"]) for e in audit if e["action"].startswith("plugin.")
    ]
    assert acts == [("plugin.activate", "acme", TWILIO)] * 2 + [
        ("plugin.deactivate", "acme", TWILIO)
    ]


def test_activate_and_deactivate_refuse_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_corral_env(monkeypatch, tmp_path)
    _install_twilio(tmp_path)
    asyncio.run(_write_settings(tmp_path / "config" / "corral.config.json"))
    capsys.readouterr()

    assert main(["tenants", "activate", "acme", OTHER, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "not_installed"
    assert main(["tenants", "activate", "bare", TWILIO, "--json"]) == 1  # no settings stored
    refused = json.loads(capsys.readouterr().out)
    assert refused["error"] == "settings_invalid"
    assert {"path": "$.auth_token", "rule": "is required"} in refused["problems"]
    assert main(["tenants", "deactivate", "acme", TWILIO, "--json"]) == 1  # never activated
    assert json.loads(capsys.readouterr().out)["error"] == "not_found"
    with pytest.raises(SystemExit) as info:
        main(["tenants", "activate", "not a tenant", TWILIO])
    assert info.value.code == 2

    assert main(["tenants", "list", "--json"]) == 0
    tenants = json.loads(capsys.readouterr().out)["tenants"]
    assert all(t["activations"] == [] for t in tenants)  # nothing was written


async def test_the_daemon_starts_what_the_cli_activated() -> None:
    state = temp_state()
    env = corral_env(state)
    try:
        install = ["plugins", "install", str(REPO / "plugins" / "twilio_sms")]
        assert (await arun_corral([*install, "--store", str(state / "store")], env)).status == 0
        await _write_settings(state / "config" / "corral.config.json")
        activated = await arun_corral(["tenants", "activate", "acme", TWILIO], env)
        assert activated.status == 0, activated.err
        async with serving(state, env) as daemon, aiohttp.ClientSession() as http:
            headers = {"X-API-Key": daemon.bootstrap_key}
            async with http.get(f"{daemon.base}/api/v1/workers", headers=headers) as answer:
                workers = (await answer.json())["workers"]
        assert {(w["tenant_id"], w["plugin_id"]) for w in workers} == {("acme", TWILIO)}
    finally:
        remove_state(state)
