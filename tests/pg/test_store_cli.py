"""`corral store migrate|status` and `corral serve --check` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli import main
from runner.pg import LATEST
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
