"""The bootstrap key: generated once into a 0600 file whose path (never the key) is logged."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from runner.auth import ApiKeys, AuthenticationError, generate_key, parse_key
from runner.bootstrap_key import BootstrapKeyError, ensure_bootstrap_key
from runner.keys import ALL_SCOPES, InMemoryKeyRepository


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])


async def test_first_start_generates_a_0600_key_file_and_logs_its_path_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    repo = InMemoryKeyRepository()
    path = tmp_path / "state" / "bootstrap-key"
    assert await ensure_bootstrap_key(repo, path, environ={}) == path
    key = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["bootstrap-key"]  # no temp file left
    principal = await ApiKeys(repo).authenticate(key)
    assert principal.scopes == ALL_SCOPES and principal.tenant_id is None
    text = all_log_text(caplog)
    assert str(path) in text and principal.key_id in text
    assert key not in text and (parse_key(key) or ("", "?"))[1] not in text


async def test_later_starts_reuse_the_file_without_a_second_record(tmp_path: Path) -> None:
    repo = InMemoryKeyRepository()
    path = tmp_path / "bootstrap-key"
    await ensure_bootstrap_key(repo, path, environ={})
    key = path.read_text()
    await ensure_bootstrap_key(repo, path, environ={})
    assert path.read_text() == key and len(await repo.list_all()) == 1


async def test_no_key_is_generated_once_keys_exist(tmp_path: Path) -> None:
    repo = InMemoryKeyRepository()
    await ApiKeys(repo).create("ops", ALL_SCOPES, by=None)
    path = tmp_path / "bootstrap-key"
    assert await ensure_bootstrap_key(repo, path, environ={}) is None
    assert not path.exists()


async def test_the_configured_file_is_used_and_registered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_id, key = generate_key()
    configured = tmp_path / "given.key"
    configured.write_text(f"{key}\n")
    configured.chmod(0o644)
    repo = InMemoryKeyRepository()
    default = tmp_path / "default-key"
    env = {"CORRAL_BOOTSTRAP_KEY_FILE": str(configured)}
    assert await ensure_bootstrap_key(repo, default, environ=env) == configured
    assert not default.exists()
    assert (await ApiKeys(repo).authenticate(key)).key_id == key_id
    assert "open to group or others" in caplog.text and key not in all_log_text(caplog)


async def test_a_missing_or_malformed_configured_file_stops_the_start(tmp_path: Path) -> None:
    repo = InMemoryKeyRepository()
    env = {"CORRAL_BOOTSTRAP_KEY_FILE": str(tmp_path / "absent")}
    with pytest.raises(BootstrapKeyError, match="absent"):
        await ensure_bootstrap_key(repo, tmp_path / "d", environ=env)
    bad = tmp_path / "bad"
    bad.write_text("hunter2-not-a-key")
    env = {"CORRAL_BOOTSTRAP_KEY_FILE": str(bad)}
    with pytest.raises(BootstrapKeyError, match="well-formed") as caught:
        await ensure_bootstrap_key(repo, tmp_path / "d", environ=env)
    assert "hunter2" not in str(caught.value)
    assert await repo.list_all() == []


async def test_a_file_whose_id_belongs_to_another_key_is_refused(tmp_path: Path) -> None:
    repo = InMemoryKeyRepository()
    path = tmp_path / "bootstrap-key"
    await ensure_bootstrap_key(repo, path, environ={})
    key_id = (parse_key(path.read_text().strip()) or ("", ""))[0]
    other_secret = (parse_key(generate_key()[1]) or ("", ""))[1]
    forged = f"crl_{key_id}_{other_secret}"
    path.write_text(forged)
    with pytest.raises(BootstrapKeyError, match="different key"):
        await ensure_bootstrap_key(repo, path, environ={})


async def test_a_revoked_bootstrap_key_stays_revoked(tmp_path: Path) -> None:
    repo = InMemoryKeyRepository()
    path = tmp_path / "bootstrap-key"
    await ensure_bootstrap_key(repo, path, environ={})
    key = path.read_text().strip()
    keys = ApiKeys(repo)
    await keys.revoke((await keys.authenticate(key)).key_id, by=None)
    await ensure_bootstrap_key(repo, path, environ={})
    with pytest.raises(AuthenticationError):
        await keys.authenticate(key)


async def test_an_unwritable_place_is_a_bootstrap_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(BootstrapKeyError, match="cannot be written"):
        await ensure_bootstrap_key(InMemoryKeyRepository(), not_a_dir / "k", environ={})
