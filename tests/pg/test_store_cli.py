"""`corral store migrate|status` and `corral serve --check` against a real server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import asyncpg
import pytest

from runner.cli import main
from runner.config_settings import ConfigSettings
from runner.pg import LATEST, PgBackend
from runner.serve_check import check


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CORRAL_CONFIG_FILE", "CORRAL_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CORRAL_STATE_DIR", str(tmp_path))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    status = main(argv)
    return status, json.loads(capsys.readouterr().out)


def test_status_then_migrate_then_status(
    pg_url: str,
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CORRAL_STORE", pg_url)
    status, before = run(["store", "status", "--json"], capsys)
    assert status == 1 and before["current"] == 0 and before["pending"] == [1]
    status, done = run(["store", "migrate", "--json"], capsys)
    assert status == 0 and done["applied_now"] == list(range(1, LATEST + 1))
    assert done["database"] == pg_url  # no password in this URL; shown as given
    status, again = run(["store", "migrate", "--json"], capsys)
    assert status == 0 and again["applied_now"] == []
    status, after = run(["store", "status", "--json"], capsys)
    assert status == 0 and after["current"] == LATEST


def test_without_corral_store_the_commands_say_so(
    cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, answer = run(["store", "status", "--json"], capsys)
    assert status == 2 and "CORRAL_STORE is not set" in str(answer["message"])


def test_an_unreachable_database_is_named_without_its_password(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CORRAL_STORE", "postgresql://corral:hunter2@127.0.0.1:1/corral")
    status, answer = run(["store", "migrate", "--json"], capsys)
    assert status == 2
    assert "127.0.0.1:1/corral" in str(answer["message"])
    assert "hunter2" not in str(answer)


def test_serve_check_checks_the_database_and_its_schema(
    pg_url: str,
    cli_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environ = {
        "CORRAL_STORE": pg_url,
        "CORRAL_STATE_DIR": str(tmp_path),
        "CORRAL_CONFIG_PATH": str(tmp_path / "config" / "corral.config.json"),
    }
    outdated = {c.name: c for c in check(environ).checks}["config_store"]
    assert not outdated.ok and "corral store migrate" in outdated.detail
    monkeypatch.setenv("CORRAL_STORE", pg_url)
    assert main(["store", "migrate"]) == 0
    capsys.readouterr()
    current = {c.name: c for c in check(environ).checks}["config_store"]
    assert current.ok and f"schema version {LATEST}" in current.detail


def test_rotate_key_rotates_the_shared_document(
    migrated_url: str,
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("CORRAL_STORE", migrated_url)
    monkeypatch.setenv("CORRAL_SECRET_KEY_FILE", str(tmp_path / "secret.key"))

    async def key_ids() -> list[str]:
        conn = await asyncpg.connect(migrated_url)
        try:
            return [r["key_id"] for r in await conn.fetch("SELECT key_id FROM secret_keys")]
        finally:
            await conn.close()

    async def open_once() -> None:  # the first host: creates the document and the key file
        pg = await PgBackend.connect(migrated_url)
        try:
            await pg.open_config(ConfigSettings.from_env(os.environ, state_dir=tmp_path))
        finally:
            await pg.close()

    asyncio.run(open_once())
    (old,) = asyncio.run(key_ids())
    status, rotated = run(["config", "rotate-key", "--json"], capsys)
    assert status == 0 and rotated["retired"] == [old]
    assert asyncio.run(key_ids()) == [rotated["key_id"]] != [old]


def test_keys_and_tenants_commands_use_the_database_when_corral_store_is_set(
    migrated_url: str,
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CORRAL_STORE", migrated_url)
    argv = ["keys", "create", "--name", "ops", "--scope", "admin:plugins:read", "--json"]
    status, created = run(argv, capsys)
    assert status == 0, created
    record = created["record"]
    assert isinstance(record, dict)
    status, listed = run(["keys", "list", "--json"], capsys)
    assert status == 0 and [k["id"] for k in listed["keys"]] == [record["id"]]  # type: ignore[union-attr]
    status, revoked = run(["keys", "revoke", str(record["id"]), "--json"], capsys)
    assert status == 0, revoked

    async def stored() -> str:
        connection = await asyncpg.connect(migrated_url)
        try:
            return str(await connection.fetchval("SELECT max(version) FROM config_versions"))
        finally:
            await connection.close()

    assert int(asyncio.run(stored())) >= 2  # created and revoked: versions in the database
    document = Path(os.environ["CORRAL_STATE_DIR"]) / "config" / "corral.config.json"
    assert not document.exists()  # the key file is local; the document is not
