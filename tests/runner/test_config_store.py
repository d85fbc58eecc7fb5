"""The JSON config store: atomic writes, backups, start-up rollback, ETags, serialized writers."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.audit import AuditLog, AuditSettings
from runner.config_errors import (
    ConfigInvalidError,
    ConfigUnrecoverableError,
    ConfigWriteError,
    PreconditionFailedError,
)
from runner.config_files import backup_path
from runner.config_model import Activation, ConfigDocument
from runner.config_settings import ConfigSettings
from runner.config_store import JsonConfigStore

REPO = Path(__file__).resolve().parents[2]


def settings_in(tmp_path: Path, backups: int = 5) -> ConfigSettings:
    return ConfigSettings(
        path=tmp_path / "config" / "corral.config.json",
        secret_key_file=tmp_path / "keys" / "secret.key",
        backups=backups,
    )


def set_value(name: str, value: object, tenant: str = "t1"):  # type: ignore[no-untyped-def]
    def mutate(doc: ConfigDocument) -> ConfigDocument:
        setattr(doc.tenant(tenant).settings, name, value)
        return doc

    return mutate


def set_plugin(tenant: str, plugin: str, settings: dict[str, object]):  # type: ignore[no-untyped-def]
    def mutate(doc: ConfigDocument) -> ConfigDocument:
        doc.tenant(tenant).settings.plugins[plugin] = settings  # type: ignore[assignment]
        return doc

    return mutate


def on_disk(settings: ConfigSettings) -> dict[str, object]:
    data: dict[str, object] = json.loads(settings.path.read_text())
    return data


async def test_a_fresh_install_creates_the_default_document_privately(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    assert store.rollback is None
    doc = on_disk(settings)
    assert doc["version"] == 1 and doc["tenants"] == {} and doc["api_keys"] == []
    assert doc["features"] == {"v3_plugins": True, "plugin_install": False}
    assert stat.S_IMODE(settings.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.path.parent.stat().st_mode) == 0o700
    assert not list(settings.path.parent.glob("*.bak.*"))


async def test_an_existing_world_readable_directory_is_reported_not_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_in(tmp_path)
    settings.path.parent.mkdir(mode=0o755)
    os.chmod(settings.path.parent, 0o755)
    with caplog.at_level(logging.WARNING):
        await JsonConfigStore.open(settings)
    assert any("world-accessible" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE(settings.path.parent.stat().st_mode) == 0o755  # maybe a shared dir
    assert stat.S_IMODE(settings.path.stat().st_mode) == 0o600


async def test_update_writes_the_document_and_keeps_the_previous_one_as_a_backup(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    before = settings.path.read_bytes()
    snapshot = await store.update(set_value("colour", "blue"))
    assert snapshot.document.tenants["t1"].settings.model_extra == {"colour": "blue"}
    assert on_disk(settings)["tenants"] == {
        "t1": {"settings": {"plugins": {}, "colour": "blue"}, "activations": []}
    }
    assert backup_path(settings.path, 1).read_bytes() == before
    assert stat.S_IMODE(settings.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup_path(settings.path, 1).stat().st_mode) == 0o600
    assert [p.name for p in settings.path.parent.iterdir() if ".tmp" in p.name] == []


async def test_backups_rotate_and_keep_n_generations(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, backups=3)
    store = await JsonConfigStore.open(settings)
    versions = []
    for i in range(6):
        versions.append(settings.path.read_bytes())
        await store.update(set_value("n", i))
    assert backup_path(settings.path, 1).read_bytes() == versions[-1]
    assert backup_path(settings.path, 2).read_bytes() == versions[-2]
    assert backup_path(settings.path, 3).read_bytes() == versions[-3]
    assert not backup_path(settings.path, 4).exists()


async def test_a_write_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    first = await store.update(set_value("n", 1))
    inode = settings.path.stat().st_ino
    again = await store.update(set_value("n", 1))
    assert again.etag == first.etag and settings.path.stat().st_ino == inode
    assert not backup_path(settings.path, 2).exists()


async def test_an_invalid_mutator_result_is_refused_and_nothing_written(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    before = settings.path.read_bytes()

    def bad(doc: ConfigDocument) -> ConfigDocument:
        doc.tenant("t1").activations = [Activation(plugin_id="x"), Activation(plugin_id="x")]
        return doc

    with pytest.raises(ConfigInvalidError, match="activated twice"):
        await store.update(bad)

    def not_json(doc: ConfigDocument) -> ConfigDocument:
        doc.tenant("t1").settings.plugins["p"] = {"x": {1, 2}}  # type: ignore[dict-item]
        return doc

    with pytest.raises(ConfigInvalidError):
        await store.update(not_json)
    assert settings.path.read_bytes() == before


async def test_a_mutator_error_propagates_and_nothing_is_written(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    before = settings.path.read_bytes()

    def boom(doc: ConfigDocument) -> ConfigDocument:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await store.update(boom)
    assert settings.path.read_bytes() == before


async def test_a_failed_write_leaves_the_last_good_document_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    await store.update(set_value("n", 1))
    before = settings.path.read_bytes()
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ConfigWriteError, match="No space left on device") as info:
        await store.update(set_value("n", 2))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "previous document is unchanged" in str(info.value)
    assert settings.path.read_bytes() == before
    assert [p.name for p in settings.path.parent.iterdir() if ".tmp" in p.name] == []
    assert (await store.load()).document.tenants["t1"].settings.model_extra == {"n": 1}
    await store.update(set_value("n", 3))  # and the store still works afterwards


async def test_a_refused_replace_leaves_the_document_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    before = settings.path.read_bytes()
    real_replace = os.replace

    def refuse(src: str, dst: str) -> None:
        if Path(dst) == settings.path:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ConfigWriteError, match="Permission denied"):
        await store.update(set_value("n", 1))
    monkeypatch.undo()
    assert settings.path.read_bytes() == before
    assert [p.name for p in settings.path.parent.iterdir() if ".tmp" in p.name] == []


async def test_a_cancelled_update_completes_or_not_but_leaves_the_store_usable(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)

    def slow(doc: ConfigDocument) -> ConfigDocument:
        time.sleep(0.3)
        result: ConfigDocument = set_value("slow", True)(doc)
        return result

    task = asyncio.create_task(store.update(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The thread finishes its write while holding the file lock; the next write waits for it.
    done = await store.update(set_value("after", 1))
    assert done.document.tenants["t1"].settings.model_extra == {"slow": True, "after": 1}
    assert [p.name for p in settings.path.parent.iterdir() if ".tmp" in p.name] == []


def test_a_real_file_size_limit_fails_the_write_cleanly(tmp_path: Path) -> None:
    """A writer process over RLIMIT_FSIZE (disk full, as the kernel sees it) gets a clear error."""
    settings = settings_in(tmp_path)
    code = f"""
import asyncio, resource, signal
from pathlib import Path
from runner.config_errors import ConfigWriteError
from runner.config_settings import ConfigSettings
from runner.config_store import JsonConfigStore

async def main():
    s = ConfigSettings(
        path=Path({str(settings.path)!r}), secret_key_file=Path({str(settings.key_file)!r})
    )
    store = await JsonConfigStore.open(s)
    def big(doc):
        doc.tenant("t1").settings.plugins["p"] = {{"blob": "x" * 200_000}}
        return doc
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        await store.update(big)
    except ConfigWriteError as exc:
        print("refused:", exc)
asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "File too large" in out.stdout
    assert on_disk(settings)["tenants"] == {}
    assert [p.name for p in settings.path.parent.iterdir() if ".tmp" in p.name] == []


async def test_document_etag_conflict_is_a_precondition_failure(tmp_path: Path) -> None:
    store = await JsonConfigStore.open(settings_in(tmp_path))
    seen = await store.load()
    await store.update(set_value("n", 1))
    with pytest.raises(PreconditionFailedError) as info:
        await store.update(set_value("n", 2), expected_etag=seen.etag)
    assert info.value.scope == "document" and info.value.expected == seen.etag
    assert info.value.current == (await store.load()).etag
    fresh = await store.load()
    done = await store.update(set_value("n", 2), expected_etag=fresh.etag)
    assert done.etag != fresh.etag


async def test_plugin_etag_covers_only_its_subtree(tmp_path: Path) -> None:
    store = await JsonConfigStore.open(settings_in(tmp_path))
    absent = (await store.load()).plugin_etag("t1", "a")
    created = await store.update(
        set_plugin("t1", "a", {"x": 1}), expected_etag=absent, subtree=("t1", "a")
    )
    etag_a = created.plugin_etag("t1", "a")
    assert etag_a != absent
    # A write to another plugin, and to the tenant's own settings, leaves a's ETag alone.
    await store.update(set_plugin("t1", "b", {"y": 2}))
    await store.update(set_value("colour", "red"))
    now = await store.load()
    assert now.plugin_etag("t1", "a") == etag_a
    await store.update(set_plugin("t1", "a", {"x": 2}), expected_etag=etag_a, subtree=("t1", "a"))
    with pytest.raises(PreconditionFailedError) as info:
        await store.update(
            set_plugin("t1", "a", {"x": 3}), expected_etag=etag_a, subtree=("t1", "a")
        )
    assert info.value.scope == "t1/a"
    assert (await store.load()).document.tenants["t1"].settings.plugins["a"] == {"x": 2}


async def test_plugin_etag_changes_when_the_activation_changes(tmp_path: Path) -> None:
    store = await JsonConfigStore.open(settings_in(tmp_path))
    before = (await store.load()).plugin_etag("t1", "a")

    def activate(doc: ConfigDocument) -> ConfigDocument:
        doc.tenant("t1").activations.append(Activation(plugin_id="a", enabled=True))
        return doc

    after = await store.update(activate)
    assert after.plugin_etag("t1", "a") != before


async def test_concurrent_tasks_lose_no_acknowledged_write(tmp_path: Path) -> None:
    store = await JsonConfigStore.open(settings_in(tmp_path))
    await asyncio.gather(*(store.update(set_value(f"k{i}", i)) for i in range(40)))
    extra = (await store.load()).document.tenants["t1"].settings.model_extra
    assert extra == {f"k{i}": i for i in range(40)}


async def test_two_store_instances_serialize_through_the_file_lock(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    one = await JsonConfigStore.open(settings)
    two = await JsonConfigStore.open(settings)
    await asyncio.gather(
        *(s.update(set_value(f"{n}{i}", i)) for i in range(20) for n, s in (("a", one), ("b", two)))
    )
    extra = (await one.load()).document.tenants["t1"].settings.model_extra or {}
    assert len(extra) == 40


async def test_load_sees_writes_made_by_another_instance(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    one = await JsonConfigStore.open(settings)
    two = await JsonConfigStore.open(settings)
    assert (await one.load()).document.tenants == {}
    await two.update(set_value("n", 1))
    assert (await one.load()).document.tenants["t1"].settings.model_extra == {"n": 1}


async def test_snapshots_are_copies(tmp_path: Path) -> None:
    store = await JsonConfigStore.open(settings_in(tmp_path))
    snapshot = await store.load()
    snapshot.document.tenant("intruder")
    assert "intruder" not in (await store.load()).document.tenants


async def test_readers_never_see_a_partial_document(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    stop = threading.Event()
    failures: list[str] = []
    reads = 0

    def read_forever() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                json.loads(settings.path.read_bytes())
                reads += 1
            except (OSError, ValueError) as exc:
                failures.append(repr(exc))

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for i in range(150):
            await store.update(set_value("blob", "x" * (i * 37 % 5000)))
    finally:
        stop.set()
        reader.join()
    assert failures == [] and reads > 0


# Start-up: rollback and refusal.


async def three_versions(settings: ConfigSettings) -> JsonConfigStore:
    store = await JsonConfigStore.open(settings)
    for i in range(3):
        await store.update(set_value("n", i))
    return store


async def test_a_corrupt_document_rolls_back_to_the_newest_backup_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_in(tmp_path)
    await three_versions(settings)
    good = backup_path(settings.path, 1).read_bytes()
    settings.path.write_bytes(b'{"version": 1, "tenants": {')  # torn by hand
    audit = await AuditLog.open(AuditSettings(tmp_path / "audit" / "audit.log"))
    with caplog.at_level(logging.INFO):
        store = await JsonConfigStore.open(settings, audit=audit)
    assert store.rollback is not None and store.rollback.restored_from.endswith(".bak.1")
    assert settings.path.read_bytes() == good
    assert (await store.load()).document.tenants["t1"].settings.model_extra == {"n": 1}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("ROLLED BACK" in m and ".bak.1" in m for m in errors)
    assert any("not JSON" in m for m in errors)
    aside = store.rollback.moved_aside
    assert aside is not None and (settings.path.parent / aside).read_bytes().startswith(b'{"ver')
    events = [json.loads(line) for line in audit.settings.path.read_text().splitlines()]
    assert [e["action"] for e in events] == ["config.rollback"]
    assert events[0]["details"]["restored_from"].endswith(".bak.1")
    # The good backups were not pushed out by the damaged file.
    assert backup_path(settings.path, 1).read_bytes() == good


async def test_an_invalid_document_rolls_back_past_invalid_backups(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    await three_versions(settings)
    wanted = backup_path(settings.path, 2).read_bytes()
    settings.path.write_text(json.dumps({"version": 1, "tenants": {}, "surprise": True}))
    backup_path(settings.path, 1).write_text(json.dumps({"version": "one"}))
    store = await JsonConfigStore.open(settings)
    assert store.rollback is not None
    assert store.rollback.restored_from.endswith(".bak.2")
    assert "surprise" in store.rollback.reason
    assert list(store.rollback.rejected) == [backup_path(settings.path, 1).name]
    assert settings.path.read_bytes() == wanted


async def test_a_missing_document_with_backups_rolls_back(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    await three_versions(settings)
    wanted = backup_path(settings.path, 1).read_bytes()
    settings.path.unlink()
    store = await JsonConfigStore.open(settings)
    assert store.rollback is not None and "missing" in store.rollback.reason
    assert store.rollback.moved_aside is None
    assert settings.path.read_bytes() == wanted


async def test_a_document_from_a_newer_corral_is_not_trusted(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    await three_versions(settings)
    settings.path.write_text(json.dumps({"version": 99}))
    store = await JsonConfigStore.open(settings)
    assert store.rollback is not None and "newer" in store.rollback.reason


async def test_no_valid_version_refuses_to_start_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_in(tmp_path)
    await three_versions(settings)
    settings.path.write_bytes(b"garbage")
    for n in (1, 2, 3):
        backup_path(settings.path, n).write_bytes(b"[]")
    audit = await AuditLog.open(AuditSettings(tmp_path / "audit" / "audit.log"))
    with pytest.raises(ConfigUnrecoverableError) as info:
        await JsonConfigStore.open(settings, audit=audit)
    message = str(info.value)
    assert "refusing to start" in message and "not JSON" in message
    assert set(info.value.candidates) == {
        settings.path.name,
        *(backup_path(settings.path, n).name for n in (1, 2, 3)),
    }
    assert settings.path.read_bytes() == b"garbage"  # nothing replaced by an empty default
    events = [json.loads(line) for line in audit.settings.path.read_text().splitlines()]
    assert [(e["action"], e["outcome"]) for e in events] == [("config.load", "error")]


async def test_a_corrupt_document_without_backups_refuses(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.path.parent.mkdir(parents=True)
    settings.path.write_bytes(b"{")
    with pytest.raises(ConfigUnrecoverableError):
        await JsonConfigStore.open(settings)


async def test_stale_temp_files_are_removed_at_start_up(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    await JsonConfigStore.open(settings)
    stale = settings.path.parent / f".{settings.path.name}.abc123.tmp"
    stale.write_bytes(b"half a docu")
    await JsonConfigStore.open(settings)
    assert not stale.exists()


async def test_a_document_damaged_while_running_serves_the_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_in(tmp_path)
    store = await JsonConfigStore.open(settings)
    await store.update(set_value("n", 1))
    settings.path.write_bytes(b"oops")
    with caplog.at_level(logging.ERROR):
        snapshot = await store.load()
    assert snapshot.document.tenants["t1"].settings.model_extra == {"n": 1}
    assert any("serving the last good version" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigInvalidError):
        await store.update(set_value("n", 2))
    assert settings.path.read_bytes() == b"oops"
