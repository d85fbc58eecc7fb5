"""Secrets at rest: encryption, masking, keeping on `***`, HIPAA key rules, key rotation, logs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue

from runner.audit import AuditLog, AuditSettings
from runner.cli import main
from runner.config_errors import (
    ConfigInvalidError,
    ConfigWriteError,
    SecretKeyError,
    SecretsMaskedError,
)
from runner.config_files import backup_path
from runner.config_model import ConfigDocument
from runner.config_secrets import (
    MASK,
    SecretBox,
    SecretKey,
    is_encrypted,
    mask_settings,
    merge_settings,
    read_key_file,
    write_key_file,
)
from runner.config_settings import ConfigSettings
from runner.config_store import JsonConfigStore

SECRET = "sk_live_DO-NOT-LEAK-4242"
OTHER_SECRET = "whsec_ALSO-PRIVATE-9999"
PLUGIN = "dev.corral.twilio-sms"


def secret_fields(plugin_id: str) -> frozenset[str]:
    return frozenset({"auth_token", "webhook_secret"}) if plugin_id == PLUGIN else frozenset()


def settings_in(tmp_path: Path, **changes: Any) -> ConfigSettings:
    base = ConfigSettings(
        path=tmp_path / "config" / "corral.config.json",
        secret_key_file=tmp_path / "keys" / "secret.key",
    )
    return dataclasses.replace(base, **changes)


def configure(tenant: str, settings: dict[str, Any]) -> Callable[[ConfigDocument], ConfigDocument]:
    def mutate(doc: ConfigDocument) -> ConfigDocument:
        doc.tenant(tenant).settings.plugins[PLUGIN] = settings
        return doc

    return mutate


def all_files_text(settings: ConfigSettings) -> str:
    return "".join(p.read_text() for p in settings.path.parent.glob(f"{settings.path.name}*"))


async def open_store(settings: ConfigSettings) -> JsonConfigStore:
    return await JsonConfigStore.open(settings, secret_fields=secret_fields)


async def test_secret_fields_are_encrypted_at_rest_and_decrypted_for_workers(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)
    store = await open_store(settings)
    await store.update(configure("t1", {"auth_token": SECRET, "from_number": "+15550001"}))
    await store.update(configure("t1", {"auth_token": SECRET, "from_number": "+15550002"}))
    stored = json.loads(settings.path.read_text())["tenants"]["t1"]["settings"]["plugins"][PLUGIN]
    assert is_encrypted(stored["auth_token"]) and stored["from_number"] == "+15550002"
    assert stored["auth_token"]["$enc"].startswith("v1:")
    assert SECRET not in all_files_text(settings)  # neither the document nor a backup
    assert await store.plugin_config("t1", PLUGIN) == {
        "auth_token": SECRET,
        "from_number": "+15550002",
    }
    assert await store.plugin_config("t2", PLUGIN) == {}


async def test_non_string_secrets_keep_their_type(tmp_path: Path) -> None:
    store = await open_store(settings_in(tmp_path))
    await store.update(configure("t1", {"auth_token": 1234, "webhook_secret": None}))
    assert await store.plugin_config("t1", PLUGIN) == {"auth_token": 1234, "webhook_secret": None}


async def test_a_ciphertext_moved_to_another_tenant_does_not_decrypt(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await open_store(settings)
    await store.update(configure("t1", {"auth_token": SECRET}))
    doc = json.loads(settings.path.read_text())
    doc["tenants"]["t2"] = json.loads(json.dumps(doc["tenants"]["t1"]))
    settings.path.write_text(json.dumps(doc))
    with pytest.raises(SecretKeyError, match="t2/dev.corral.twilio-sms/auth_token.*moved"):
        await JsonConfigStore.open(settings, secret_fields=secret_fields)
    box = SecretBox.open(settings.key_file, create=False, strict_mode=False)
    sealed = box.encrypt(SECRET, "t1/p/auth_token")
    assert box.decrypt(sealed, "t1/p/auth_token") == SECRET
    with pytest.raises(SecretKeyError, match="tampered or moved"):
        box.decrypt(sealed, "t2/p/auth_token")


def test_masking_hides_stored_and_plaintext_secrets() -> None:
    stored: dict[str, JsonValue] = {
        "auth_token": {"$enc": "v1:ab:cd"},
        "from_number": "+1555",
        "webhook_secret": "x",
    }
    assert mask_settings(stored, secret_fields(PLUGIN)) == {
        "auth_token": MASK,
        "from_number": "+1555",
        "webhook_secret": MASK,
    }
    # An encrypted value is masked even if the manifest no longer marks it secret.
    assert mask_settings(stored, frozenset()) == {**stored, "auth_token": MASK}
    assert mask_settings({"auth_token": None}, secret_fields(PLUGIN)) == {"auth_token": None}


async def test_sending_back_the_mask_keeps_the_stored_secret(tmp_path: Path) -> None:
    store = await open_store(settings_in(tmp_path))
    await store.update(configure("t1", {"auth_token": SECRET, "from_number": "+1"}))
    snapshot = await store.load()
    current = snapshot.document.tenants["t1"].settings.plugins[PLUGIN]
    answer = mask_settings(current, secret_fields(PLUGIN))
    assert answer == {"auth_token": MASK, "from_number": "+1"}
    merged = merge_settings(current, {**answer, "from_number": "+2"}, secret_fields(PLUGIN))
    assert merged["auth_token"] == current["auth_token"]  # the stored ciphertext, kept as is
    await store.update(configure("t1", merged))
    assert await store.plugin_config("t1", PLUGIN) == {"auth_token": SECRET, "from_number": "+2"}
    # The same works on decrypted settings, and a new value replaces the secret.
    plain = await store.plugin_config("t1", PLUGIN)
    assert merge_settings(plain, {"auth_token": MASK}, secret_fields(PLUGIN)) == {
        "auth_token": SECRET
    }
    changed = merge_settings(plain, {"auth_token": OTHER_SECRET}, secret_fields(PLUGIN))
    await store.update(configure("t1", changed))
    assert (await store.plugin_config("t1", PLUGIN))["auth_token"] == OTHER_SECRET


def test_merge_refuses_a_mask_with_nothing_stored_and_injected_ciphertext() -> None:
    with pytest.raises(SecretsMaskedError) as info:
        merge_settings({}, {"auth_token": MASK}, secret_fields(PLUGIN))
    assert info.value.field == "auth_token"
    with pytest.raises(ConfigInvalidError, match="encrypted values cannot be sent"):
        merge_settings({}, {"auth_token": {"$enc": "v1:x:y"}}, secret_fields(PLUGIN))
    # A non-secret field may legitimately hold the text "***".
    assert merge_settings({}, {"from_number": MASK}, secret_fields(PLUGIN)) == {"from_number": MASK}


async def test_plaintext_secrets_found_at_start_up_are_encrypted(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)  # no resolver: nothing is secret yet
    await store.update(configure("t1", {"auth_token": SECRET}))
    assert SECRET in settings.path.read_text()
    await store.update(configure("t1", {"auth_token": SECRET, "n": 1}))
    assert SECRET in backup_path(settings.path, 1).read_text()
    await open_store(settings)  # now the manifest marks it secret
    assert SECRET not in all_files_text(settings)  # the backups were sealed too
    assert (await open_store(settings)).rollback is None


# The key file.


async def test_outside_hipaa_a_missing_key_file_is_generated_0600(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    await open_store(settings)
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert len(read_key_file(settings.key_file)) == 1


def test_processes_racing_to_create_the_key_file_all_end_up_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    script = (
        "import sys; from pathlib import Path; from runner.config_secrets import SecretBox; "
        "box = SecretBox.open(Path(sys.argv[1]), create=True, strict_mode=False); "
        "print(box.primary.key_id)"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    key_ids = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    assert key_ids == {read_key_file(path)[0].key_id}
    assert len(read_key_file(path)) == 1
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temp file left


async def test_without_a_named_key_file_it_sits_beside_the_document(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, secret_key_file=None)
    await open_store(settings)
    assert (settings.path.parent / "corral.secret.key").exists()


async def test_hipaa_refuses_without_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(SecretKeyError, match="requires CORRAL_SECRET_KEY_FILE"):
        await open_store(settings_in(tmp_path, profile="hipaa", secret_key_file=None))
    settings = settings_in(tmp_path, profile="hipaa")
    with pytest.raises(SecretKeyError, match="never generated"):
        await open_store(settings)
    assert not settings.key_file.exists()
    assert not settings.path.exists()  # refused before touching the document


async def test_hipaa_starts_with_a_private_key_file_and_refuses_a_readable_one(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path, profile="hipaa")
    settings.key_file.parent.mkdir()
    write_key_file(settings.key_file, [SecretKey.generate()])
    store = await open_store(settings)
    await store.update(configure("t1", {"auth_token": SECRET}))
    os.chmod(settings.key_file, 0o644)
    with pytest.raises(SecretKeyError, match="mode 644"):
        await open_store(settings)


async def test_a_wrong_key_file_refuses_rather_than_rolling_back(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await open_store(settings)
    await store.update(configure("t1", {"auth_token": SECRET}))
    await store.update(configure("t1", {"auth_token": OTHER_SECRET}))
    document = settings.path.read_bytes()
    write_key_file(settings.key_file, [SecretKey.generate()])
    with pytest.raises(SecretKeyError, match="not in"):
        await open_store(settings)
    assert settings.path.read_bytes() == document


def test_a_malformed_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("corral-key-v1:c2hvcnQ=\n")
    with pytest.raises(SecretKeyError, match="32-byte"):
        SecretBox.open(path, create=False, strict_mode=False)
    path.write_text("# only a comment\n")
    with pytest.raises(SecretKeyError, match="holds no key"):
        read_key_file(path)


# Rotation.


async def test_rotation_re_encrypts_everything_and_retires_the_old_key(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    audit = await AuditLog.open(AuditSettings(tmp_path / "audit.log"))
    store = await JsonConfigStore.open(settings, secret_fields=secret_fields, audit=audit)
    for tenant in ("t1", "t2"):
        await store.update(configure(tenant, {"auth_token": SECRET, "webhook_secret": "w"}))
    old = read_key_file(settings.key_file)[0].key_id
    other = await open_store(settings)  # another process's view, holding the old key
    rotation = await store.rotate_secret_key()
    assert rotation.retired == [old] and rotation.key_id != old
    assert rotation.secrets == 4 and settings.path.name in rotation.files
    assert [k.key_id for k in read_key_file(settings.key_file)] == [rotation.key_id]
    text = all_files_text(settings)
    assert old not in text and SECRET not in text
    for name in rotation.files:
        text = (settings.path.parent / name).read_text()
        assert "$enc" not in text or f"v1:{rotation.key_id}:" in text
    assert (await store.plugin_config("t2", PLUGIN))["auth_token"] == SECRET
    assert (await other.plugin_config("t1", PLUGIN))["auth_token"] == SECRET  # re-read the key
    await other.update(configure("t3", {"auth_token": OTHER_SECRET}))  # encrypts with the new key
    assert f"v1:{old}:" not in settings.path.read_text()
    event = json.loads(audit.settings.path.read_text().splitlines()[-1])
    assert event["action"] == "config.rotate_key" and event["details"]["key_id"] == rotation.key_id


async def test_an_interrupted_rotation_keeps_every_value_readable_and_can_be_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in(tmp_path)
    audit = await AuditLog.open(AuditSettings(tmp_path / "audit.log"))
    store = await JsonConfigStore.open(settings, secret_fields=secret_fields, audit=audit)
    await store.update(configure("t1", {"auth_token": SECRET}))
    old = read_key_file(settings.key_file)[0].key_id

    def fail(data: bytes, *, backups: int) -> None:
        raise ConfigWriteError(str(settings.path), "simulated crash")

    monkeypatch.setattr(store, "_write", fail)
    with pytest.raises(ConfigWriteError):
        await store.rotate_secret_key()
    monkeypatch.undo()
    event = json.loads(audit.settings.path.read_text().splitlines()[-1])
    assert (event["action"], event["outcome"]) == ("config.rotate_key", "error")
    keys = [k.key_id for k in read_key_file(settings.key_file)]
    assert len(keys) == 2 and keys[1] == old  # the new key first, the old one still there
    assert (await (await open_store(settings)).plugin_config("t1", PLUGIN))["auth_token"] == SECRET
    rotation = await store.rotate_secret_key()
    assert set(rotation.retired) == set(keys)
    assert [k.key_id for k in read_key_file(settings.key_file)] == [rotation.key_id]
    assert (await store.plugin_config("t1", PLUGIN))["auth_token"] == SECRET


def test_rotate_key_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_in(tmp_path)
    monkeypatch.setenv("CORRAL_CONFIG_PATH", str(settings.path))
    monkeypatch.setenv("CORRAL_SECRET_KEY_FILE", str(settings.key_file))
    monkeypatch.setenv("CORRAL_STATE_DIR", str(tmp_path / "state"))
    assert main(["config", "rotate-key", "--json"]) == 1  # no key file yet: nothing to rotate
    assert json.loads(capsys.readouterr().out)["error"] == "rotation_failed"

    async def prepare() -> JsonConfigStore:
        store = await open_store(settings)
        await store.update(configure("t1", {"auth_token": SECRET}))
        return store

    store = asyncio.run(prepare())
    old = read_key_file(settings.key_file)[0].key_id
    assert main(["config", "rotate-key", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["retired"] == [old] and result["secrets"] == 1
    assert asyncio.run(store.plugin_config("t1", PLUGIN))["auth_token"] == SECRET
    trail = (tmp_path / "state" / "audit" / "audit.log").read_text()
    assert "config.rotate_key" in trail
    assert main(["config", "rotate-key"]) == 0
    assert "secret key rotated" in capsys.readouterr().out


# Nothing secret in any log line or audit line.


async def test_no_secret_appears_in_any_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_in(tmp_path)
    audit = await AuditLog.open(AuditSettings(tmp_path / "audit.log"))
    store = await JsonConfigStore.open(settings, secret_fields=secret_fields, audit=audit)
    for n in range(2):  # twice: the backup holds secrets too
        await store.update(
            configure("t1", {"auth_token": SECRET, "webhook_secret": OTHER_SECRET, "n": n})
        )
    await store.plugin_config("t1", PLUGIN)

    def invalid(doc: ConfigDocument) -> ConfigDocument:
        doc.tenant("t1").settings.plugins[PLUGIN] = {"auth_token": {SECRET, OTHER_SECRET}}  # type: ignore[dict-item]
        return doc

    errors: list[BaseException] = []
    with pytest.raises(ConfigInvalidError) as info:
        await store.update(invalid)
    errors.append(info.value)
    await store.rotate_secret_key()
    settings.path.write_text("{broken")  # a rollback, with logs at error level
    await JsonConfigStore.open(settings, secret_fields=secret_fields, audit=audit)
    write_key_file(settings.key_file, [SecretKey.generate()])
    with pytest.raises(SecretKeyError) as wrong_key:
        await JsonConfigStore.open(settings, secret_fields=secret_fields, audit=audit)
    errors.append(wrong_key.value)
    lines = [r.getMessage() for r in caplog.records] + [str(e) for e in errors]
    lines += [repr(e.__cause__) for e in errors] + [repr(e.__context__) for e in errors]
    assert len(caplog.records) >= 3
    for secret in (SECRET, OTHER_SECRET):
        assert not [line for line in lines if secret in line]
        assert secret not in audit.settings.path.read_text()
