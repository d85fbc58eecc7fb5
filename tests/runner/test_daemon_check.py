"""`corral serve --check`: every problem listed with its reason, exit 1; 0 when all is well."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main
from tests.runner.daemon_harness import daemon_env, make_state


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state dir with trust files, and an environment naming it (sandbox permissive)."""
    path = make_state()
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)
    for name, value in daemon_env(path, {"CORRAL_SANDBOX_MODE": "permissive"}).items():
        if name.startswith("CORRAL_"):
            monkeypatch.setenv(name, value)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    status = main(["serve", "--check", "--json", *args])
    return status, json.loads(capsys.readouterr().out)


def failed(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


def test_a_good_setup_passes_every_check_and_creates_nothing(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.relative_to(state) for p in state.rglob("*"))
    status, report = run_check(capsys)
    assert (status, report["ok"], failed(report)) == (0, True, {})
    names = {c["name"] for c in report["checks"]}
    assert {"settings", "state_dir", "config_store", "secret_key", "allowlist", "sandbox"} <= names
    assert {"checksums", "registry", "audit_log"} <= names
    assert sorted(p.relative_to(state) for p in state.rglob("*")) == before


def test_bad_settings_are_each_named(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = state / "corral.toml"
    config.write_text('listen_port = "8080"\nwebhook_rate = 5\n')
    monkeypatch.setenv("CORRAL_AUDIT_KEEP", "zero")
    status, report = run_check(capsys, "--config", str(config))
    assert status == 1 and not report["ok"]
    details = "\n".join(c["detail"] for c in report["checks"] if not c["ok"])
    for key in (f"{config}: listen_port", f"{config}: webhook_rate", "CORRAL_AUDIT_KEEP"):
        assert key in details, details


def test_every_broken_part_is_reported_not_only_the_first(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (state / "allowlist.toml").write_text("[[plugin]]\nid = 3\n")
    (state / "checksums.txt").write_text("not a checksum line\n")
    store = state / "config" / "corral.config.json"
    store.parent.mkdir()
    store.write_text("{not json")
    monkeypatch.setenv("CORRAL_TLS_CERT", str(state / "missing-cert.pem"))
    monkeypatch.setenv("CORRAL_TLS_KEY", str(state / "missing-key.pem"))
    monkeypatch.setenv("CORRAL_PLUGIN_REGISTRY", str(state / "no-registry.json"))
    status, report = run_check(capsys)
    assert status == 1
    problems = failed(report)
    assert set(problems) >= {"tls", "allowlist", "checksums", "config_store", "registry"}
    assert "missing-cert.pem" in problems["tls"]
    assert "roll back" in problems["config_store"]
    assert not store.with_name(store.name + ".bak.1").exists()  # nothing rolled back by a check


def test_the_hipaa_profile_needs_an_existing_private_key_file(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_PROFILE", "hipaa")
    status, report = run_check(capsys)
    assert status == 1
    assert "CORRAL_SECRET_KEY_FILE" in failed(report)["secret_key"]
    key = state / "secret.key"
    key.write_text("corral-key-v1:" + "A" * 43 + "\n")
    key.chmod(0o644)
    monkeypatch.setenv("CORRAL_SECRET_KEY_FILE", str(key))
    status, report = run_check(capsys)
    assert status == 1
    assert "0600" in failed(report)["secret_key"]


def test_the_text_report_says_what_failed(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_ALLOWLIST_PATH", str(state / "nowhere.toml"))
    assert main(["serve", "--check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  allowlist" in out and "nowhere.toml" in out
    assert "corral would not start" in out
