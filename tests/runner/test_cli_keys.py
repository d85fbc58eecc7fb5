"""`corral keys create|list|revoke` on a real config store, with and without a running daemon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from runner.cli import main
from tests.runner.cli_harness import (
    arun_corral,
    corral_env,
    remove_state,
    serving,
    set_corral_env,
    temp_state,
)


def test_create_list_revoke_without_a_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_corral_env(monkeypatch, tmp_path)
    assert main(["keys", "list", "--json"]) == 2  # no document yet: not created by a read
    assert json.loads(capsys.readouterr().out)["error"] == "unusable"
    assert not (tmp_path / "config").exists()

    create = ["keys", "create", "--name", "ci", "--scope", "admin:plugins:read"]
    assert main([*create, "--scope", "keys:manage", "--tenant", "acme", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    key, record = created["key"], created["record"]
    assert key.startswith(f"crl_{record['id']}_")
    assert record["scopes"] == ["admin:plugins:read", "keys:manage"]
    assert (record["tenant_id"], record["revoked_at"]) == ("acme", None)

    assert main(create) == 0  # plain output: the key alone on stdout, the rest on stderr
    plain = capsys.readouterr()
    second_key = plain.out.strip()
    assert second_key.startswith("crl_") and "only time" in plain.err

    assert main(["keys", "list", "--json"]) == 0
    listing = capsys.readouterr().out
    assert key not in listing and second_key not in listing and "sha256:" not in listing
    keys = json.loads(listing)["keys"]
    assert [k["name"] for k in keys] == ["ci", "ci"] and "hash" not in keys[0]

    assert main(["keys", "revoke", record["id"], "--json"]) == 0
    revoked = json.loads(capsys.readouterr().out)
    assert revoked["record"]["revoked_at"] is not None and revoked["already_revoked"] is False
    assert main(["keys", "revoke", record["id"], "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_revoked"] is True
    assert again["record"]["revoked_at"] == revoked["record"]["revoked_at"]
    assert main(["keys", "revoke", "0123456789abcdef", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "not_found"

    assert main(["keys", "list"]) == 0
    table = capsys.readouterr().out
    assert f"{record['id']}" in table and "revoked" in table and "active" in table

    audit = (tmp_path / "audit" / "audit.log").read_text()
    assert key not in audit and second_key not in audit  # the key is on record nowhere
    actions = [json.loads(line)["action"] for line in audit.splitlines()]
    assert actions.count("key.create") == 2 and actions.count("key.revoke") == 3
    assert main(["audit", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["intact"] is True


def test_create_refuses_bad_input_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_corral_env(monkeypatch, tmp_path)
    assert main(["keys", "create", "--name", " ", "--scope", "keys:manage", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "bad_request"
    for bad in (["--scope", "root"], ["--scope", "keys:manage", "--tenant", "no spaces"]):
        with pytest.raises(SystemExit) as info:
            main(["keys", "create", "--name", "x", *bad])
        assert info.value.code == 2
    assert main(["keys", "list", "--json"]) == 0  # the first attempt created the store...
    assert json.loads(capsys.readouterr().out)["keys"] == []  # ... but no key


async def test_revocation_applies_to_the_running_daemons_next_request() -> None:
    state = temp_state()
    env = corral_env(state)
    try:
        async with serving(state, env) as daemon, aiohttp.ClientSession() as http:
            created = await arun_corral(
                ["keys", "create", "--name", "ops", "--scope", "admin:plugins:read", "--json"], env
            )
            assert created.status == 0, created.err
            key, key_id = created.json()["key"], created.json()["record"]["id"]
            async with http.get(f"{daemon.base}/plugins", headers={"X-API-Key": key}) as answer:
                assert answer.status == 200

            # The daemon and the CLI write keys at the same time: neither loses the other's.
            admin = {"X-API-Key": daemon.bootstrap_key}
            body = {"name": "api", "scopes": ["admin:plugins:read"]}

            async def api_create() -> int:
                url = f"{daemon.base}/api/v1/admin/keys"
                async with http.post(url, json=body, headers=admin) as answer:
                    return answer.status

            cli = ["keys", "create", "--name", "cli", "--scope", "admin:plugins:read"]
            results = await asyncio.gather(
                *(api_create() for _ in range(4)), *(arun_corral(cli, env) for _ in range(2))
            )
            assert results[:4] == [201] * 4 and [r.status for r in results[4:]] == [0, 0]
            async with http.get(f"{daemon.base}/api/v1/admin/keys", headers=admin) as answer:
                names = [k["name"] for k in (await answer.json())["keys"]]
            assert sorted(names) == ["api"] * 4 + ["bootstrap"] + ["cli"] * 2 + ["ops"]

            revoked = await arun_corral(["keys", "revoke", key_id, "--json"], env)
            assert revoked.status == 0, revoked.err
            async with http.get(f"{daemon.base}/plugins", headers={"X-API-Key": key}) as answer:
                assert answer.status == 401
    finally:
        remove_state(state)
