from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from runner.install import Installer
from runner.install_errors import InstallError, Reason
from runner.install_store import InstalledPlugin, RecordsError
from tests.fixtures.install.builders import (
    allow,
    bundle_files,
    checksums_for,
    installer,
    key_toml,
    new_key,
    write_dir,
)


async def _installed(tmp_path: Path) -> tuple[Installer, InstalledPlugin, Path]:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    record = await inst.install(bundle)
    return inst, record, inst.path_of(record)


def _tamper(entry: Path, change: str) -> None:
    """What an attacker with write access to the store might do (it is read-only: unseal)."""
    os.chmod(entry, 0o755)
    if change == "edited":
        os.chmod(entry / "demo.py", 0o644)
        (entry / "demo.py").write_text("import os\nos.system('id')\n")
    elif change == "added":
        (entry / "sitecustomize.py").write_text("import os\n")
    elif change == "removed":
        os.chmod(entry / "lib", 0o755)
        (entry / "lib" / "helpers.py").unlink()
    elif change == "symlink":
        (entry / "evil.py").symlink_to("/etc/passwd")
    elif change == "pycache":
        (entry / "__pycache__").mkdir()
        (entry / "__pycache__" / "demo.cpython-311.pyc").write_bytes(b"\0" * 16)
    elif change == "executable":
        os.chmod(entry / "demo.py", 0o555)


async def test_intact_plugins_verify_ok(tmp_path: Path) -> None:
    inst, record, entry = await _installed(tmp_path)
    (status,) = await inst.verify_installed()
    assert (status.status, status.record, status.path, status.is_ok) == ("ok", record, entry, True)
    assert await inst.verify_for_spawn(record) == entry


@pytest.mark.parametrize(
    "change", ["edited", "added", "removed", "symlink", "pycache", "executable"]
)
async def test_a_tampered_plugin_is_reported_modified_at_start_up(
    tmp_path: Path, change: str
) -> None:
    inst, record, entry = await _installed(tmp_path)
    _tamper(entry, change)
    # A fresh Installer: what the host does at its next start.
    restarted = Installer(inst.settings)
    (status,) = await restarted.verify_installed()
    assert status.status == "modified" and not status.is_ok, status.detail
    with pytest.raises(InstallError) as info:
        await restarted.verify_for_spawn(record)
    assert info.value.reason is Reason.MODIFIED and info.value.plugin_id == record.plugin_id


async def test_a_file_swapped_after_verification_is_caught_at_spawn(tmp_path: Path) -> None:
    inst, record, entry = await _installed(tmp_path)
    assert [s.status for s in await inst.verify_installed()] == ["ok"]
    _tamper(entry, "edited")
    with pytest.raises(InstallError) as info:
        await inst.verify_for_spawn(record)
    assert info.value.reason is Reason.MODIFIED


async def test_a_removed_entry_is_missing(tmp_path: Path) -> None:
    inst, record, entry = await _installed(tmp_path)
    os.chmod(entry, 0o755)
    os.chmod(entry / "lib", 0o755)

    shutil.rmtree(entry)
    (status,) = await inst.verify_installed()
    assert status.status == "missing"
    with pytest.raises(InstallError) as info:
        await inst.verify_for_spawn(record)
    assert info.value.reason is Reason.MISSING


async def test_a_corrupt_record_cannot_point_outside_the_store(tmp_path: Path) -> None:
    inst, record, _ = await _installed(tmp_path)
    forged = msgspec.structs.replace(record, digest="../../etc")
    with pytest.raises(InstallError) as info:
        await inst.verify_for_spawn(forged)
    assert info.value.reason is Reason.MODIFIED


async def test_reinstalling_repairs_a_tampered_entry(tmp_path: Path) -> None:
    inst, record, entry = await _installed(tmp_path)
    _tamper(entry, "edited")
    again = await inst.install(tmp_path / "demo")
    assert again.digest == record.digest
    assert await inst.verify_for_spawn(again) == entry


@pytest.mark.parametrize("policy", ["removed", "version", "pin", "signature"])
async def test_a_plugin_the_allowlist_no_longer_admits_is_revoked(
    tmp_path: Path, policy: str
) -> None:
    inst, _, _ = await _installed(tmp_path)
    _, public = new_key()
    allowlist = {
        "removed": allow("dev.corral.other"),
        "version": allow(extra='versions = ">=2.0.0"'),
        "pin": allow(extra=f'digests = ["{"0" * 64}"]'),
        "signature": allow(top="require_signature = true\n" + key_toml("k", public)),
    }[policy]
    restarted = installer(tmp_path, allowlist, inst.settings.checksums)
    (status,) = await restarted.verify_installed()
    assert status.status == "revoked" and not status.is_ok, status.detail


async def test_the_index_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    inst, record, _ = await _installed(tmp_path)
    index = tmp_path / "store" / "index.json"
    assert msgspec.json.decode(index.read_bytes())["plugins"][0]["digest"] == record.digest
    assert [p.name for p in index.parent.iterdir() if p.name.startswith(".index")] == []
    await inst.records.remove(record.plugin_id, record.version)
    assert await inst.installed() == []


async def test_a_corrupt_index_is_reported_not_guessed(tmp_path: Path) -> None:
    inst, _, _ = await _installed(tmp_path)
    (tmp_path / "store" / "index.json").write_text('{"format": 1, "plugins": [{"x": 1}]}')
    with pytest.raises(RecordsError):
        await inst.verify_installed()
