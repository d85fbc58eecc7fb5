"""Installed bundles shared through PostgreSQL: stored once, fetched and verified elsewhere."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import pytest

from runner.digest import tree_digest
from runner.install_errors import InstallError, Reason
from runner.pg import PgBundles, pack_tree
from tests.fixtures.install.builders import (
    PLUGIN_ID,
    allow,
    bundle_files,
    checksums_for,
    installer,
    write_dir,
)


def _host(tmp_path: Path, name: str, bundle: Path, pool: asyncpg.Pool, url: str):  # type: ignore[no-untyped-def]
    inst = installer(tmp_path / name, allow(), checksums_for(tmp_path, bundle))
    inst.shared = PgBundles(pool, url)
    return inst


async def test_a_bundle_installed_on_one_host_is_stored_once_and_fetched_on_another(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> None:
    files = bundle_files() | {"bin/tool": b"#!/bin/sh\n"}
    bundle = write_dir(tmp_path / "bundles" / "demo", files)
    (bundle / "bin" / "tool").chmod(0o755)
    one = _host(tmp_path, "a", bundle, pools[0], migrated_url)
    two = _host(tmp_path, "b", bundle, pools[1], migrated_url)

    first = await one.install(bundle)
    record = await one.install(bundle)  # again: nothing new stored (the record is refreshed)
    assert record.digest == first.digest
    async with pools[0].acquire() as conn:
        blobs = await conn.fetchval("SELECT count(*) FROM bundle_blobs")
        shared = await conn.fetch("SELECT plugin_id, digest FROM installed_bundles")
    assert blobs == 1 and [tuple(r) for r in shared] == [(PLUGIN_ID, record.digest)]

    assert await two.installed() == []
    fetched = await two.sync_shared()
    assert fetched == [record] and await two.installed() == [record]
    entry = await two.verify_for_spawn(record)
    assert entry == tmp_path / "b" / "store" / record.digest
    assert tree_digest(entry) == record.digest
    assert (entry / "bin" / "tool").stat().st_mode & 0o111


async def test_a_missing_entry_is_fetched_on_demand_before_a_spawn(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> None:
    bundle = write_dir(tmp_path / "bundles" / "demo", bundle_files())
    one = _host(tmp_path, "a", bundle, pools[0], migrated_url)
    two = _host(tmp_path, "b", bundle, pools[1], migrated_url)
    record = await one.install(bundle)
    path = await two.verify_for_spawn(record)  # nothing local at all: fetched, then verified
    assert tree_digest(path) == record.digest


async def test_a_tampered_stored_tree_is_never_committed(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> None:
    bundle = write_dir(tmp_path / "bundles" / "demo", bundle_files())
    one = _host(tmp_path, "a", bundle, pools[0], migrated_url)
    two = _host(tmp_path, "b", bundle, pools[1], migrated_url)
    record = await one.install(bundle)
    other = write_dir(tmp_path / "evil", bundle_files() | {"demo.py": b"import os\n"})
    forged = pack_tree(other)
    async with pools[0].acquire() as conn:
        # The archive's own sha256 updated too: only the tree digest can tell.
        await conn.execute(
            "UPDATE bundle_blobs SET archive = $1, archive_sha256 = $2",
            forged,
            hashlib.sha256(forged).hexdigest(),
        )
    with pytest.raises(InstallError) as refused:
        await two.verify_for_spawn(record)
    assert refused.value.reason is Reason.MODIFIED
    assert not (tmp_path / "b" / "store" / record.digest).exists()
    assert await two.sync_shared() == []
    assert two.refusals[("fetch", "modified")] == 1


async def test_uninstalling_forgets_the_shared_record_and_its_tree(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> None:
    bundle = write_dir(tmp_path / "bundles" / "demo", bundle_files())
    one = _host(tmp_path, "a", bundle, pools[0], migrated_url)
    await one.install(bundle)
    await one.uninstall(PLUGIN_ID)
    async with pools[0].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM installed_bundles") == 0
        assert await conn.fetchval("SELECT count(*) FROM bundle_blobs") == 0


def test_packing_is_deterministic(tmp_path: Path) -> None:
    first = write_dir(tmp_path / "one", bundle_files())
    second = write_dir(tmp_path / "two", bundle_files())
    assert pack_tree(first) == pack_tree(second)
