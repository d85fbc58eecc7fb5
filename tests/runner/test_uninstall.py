from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import msgspec
import pytest

from runner.install import Installer
from runner.install_errors import InstallError, Reason
from runner.install_store import InstalledPlugin
from tests.fixtures.install.builders import (
    PLUGIN_ID,
    allow,
    bundle_files,
    checksums_for,
    installer,
    store_leftovers,
    write_dir,
)

OTHER_ID = "dev.corral.test.other"


async def _two_versions(tmp_path: Path) -> tuple[Installer, InstalledPlugin, InstalledPlugin]:
    one = write_dir(tmp_path / "one", bundle_files(version="1.0.0"))
    two = write_dir(tmp_path / "two", bundle_files(version="1.1.0"))
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, one, two))
    return inst, await inst.install(one), await inst.install(two)


async def _assert_clean(inst: Installer, expected: list[InstalledPlugin]) -> None:
    assert await inst.installed() == expected
    statuses = await inst.verify_installed()
    assert [(s.record, s.status) for s in statuses] == [(r, "ok") for r in expected]
    assert store_leftovers(inst.settings.store_dir) == sorted({r.digest for r in expected})


async def test_uninstall_removes_the_record_and_the_sealed_entry(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    record = await inst.install(bundle)

    removed = await inst.uninstall(PLUGIN_ID)

    assert removed == [record]
    assert not inst.path_of(record).exists()
    await _assert_clean(inst, [])


async def test_uninstall_of_one_version_keeps_the_others(tmp_path: Path) -> None:
    inst, one, two = await _two_versions(tmp_path)

    assert await inst.uninstall(PLUGIN_ID, "1.0.0") == [one]

    await _assert_clean(inst, [two])


async def test_uninstall_without_a_version_removes_every_version(tmp_path: Path) -> None:
    one = write_dir(tmp_path / "one", bundle_files(version="1.0.0"))
    two = write_dir(tmp_path / "two", bundle_files(version="1.1.0"))
    other = write_dir(tmp_path / "other", bundle_files(plugin_id=OTHER_ID))
    allowlist = allow(extra=f'[[plugin]]\nid = "{OTHER_ID}"\n')
    inst = installer(tmp_path, allowlist, checksums_for(tmp_path, one, two, other))
    removed = [await inst.install(one), await inst.install(two)]
    kept = await inst.install(other)

    assert await inst.uninstall(PLUGIN_ID) == removed

    await _assert_clean(inst, [kept])


async def test_an_entry_still_referenced_by_another_record_is_kept(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    record = await inst.install(bundle)
    sharing = msgspec.structs.replace(record, version="1.0.1")  # same digest, another record
    await inst.records.put(sharing)

    assert await inst.uninstall(PLUGIN_ID, "1.0.0") == [record]

    assert inst.path_of(sharing).is_dir()
    await _assert_clean(inst, [sharing])
    assert await inst.uninstall(PLUGIN_ID) == [sharing]
    await _assert_clean(inst, [])


async def test_uninstall_of_an_unknown_id_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    record = await inst.install(bundle)

    with pytest.raises(InstallError) as info:
        await inst.uninstall("dev.corral.test.nope")

    assert info.value.reason is Reason.NOT_INSTALLED
    assert info.value.plugin_id == "dev.corral.test.nope"
    assert info.value.to_dict() == {
        "reason": "not_installed",
        "message": "dev.corral.test.nope is not installed",
        "plugin_id": "dev.corral.test.nope",
    }
    await _assert_clean(inst, [record])


async def test_uninstall_of_a_version_not_installed_is_refused(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    record = await inst.install(bundle)

    with pytest.raises(InstallError) as info:
        await inst.uninstall(PLUGIN_ID, "2.0.0")

    assert info.value.reason is Reason.NOT_INSTALLED
    assert info.value.message == f"{PLUGIN_ID} 2.0.0 is not installed"
    await _assert_clean(inst, [record])


async def test_uninstall_from_an_empty_store_is_refused(tmp_path: Path) -> None:
    inst = installer(tmp_path, allow(), checksums_for(tmp_path))
    with pytest.raises(InstallError) as info:
        await inst.uninstall(PLUGIN_ID)
    assert info.value.reason is Reason.NOT_INSTALLED
    assert store_leftovers(tmp_path / "store") == []


async def test_a_bundle_can_be_installed_again_after_uninstall(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    await inst.install(bundle)
    await inst.uninstall(PLUGIN_ID)

    again = await inst.install(bundle)

    await _assert_clean(inst, [again])


async def test_a_cancelled_uninstall_still_finishes_before_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    record = await inst.install(bundle)
    started, release = threading.Event(), threading.Event()
    real_remove = inst.store.remove_entry

    def slow_remove(digest: str) -> bool:
        started.set()
        assert release.wait(timeout=10), "the test never released the removal"
        return real_remove(digest)

    monkeypatch.setattr(inst.store, "remove_entry", slow_remove)
    task = asyncio.create_task(inst.uninstall(PLUGIN_ID))
    while not started.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done(), "uninstall returned while its removal was still running"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not inst.path_of(record).exists()
    await _assert_clean(inst, [])


async def test_uninstall_and_install_are_serialized(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    await inst.install(bundle)

    _, again = await asyncio.gather(inst.uninstall(PLUGIN_ID), inst.install(bundle))

    # Whichever order the lock gave, the record and its entry agree.
    await _assert_clean(inst, await inst.installed())
    assert await inst.installed() in ([], [again])


async def test_a_record_with_a_corrupt_digest_never_names_a_path_to_remove(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    inst = installer(tmp_path, allow(), checksums_for(tmp_path))
    corrupt = InstalledPlugin(PLUGIN_ID, "1.0.0", digest="../outside", source="x", source_sha256="")
    await inst.records.put(corrupt)

    assert await inst.uninstall(PLUGIN_ID) == [corrupt]

    assert outside.is_dir()
    await _assert_clean(inst, [])


def test_removing_a_missing_store_entry_is_a_no_op(tmp_path: Path) -> None:
    inst = installer(tmp_path, allow(), checksums_for(tmp_path))
    assert inst.store.remove_entry("0" * 64) is False


def test_the_store_refuses_to_remove_what_is_not_a_digest(tmp_path: Path) -> None:
    inst = installer(tmp_path, allow(), checksums_for(tmp_path))
    (tmp_path / "store").mkdir()
    with pytest.raises(ValueError):
        inst.store.remove_entry("..")
    assert (tmp_path / "store").is_dir()
