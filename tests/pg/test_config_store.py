"""PgConfigStore: the ConfigStore contract against a real server, and two hosts sharing it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from runner.config_errors import (
    ConfigInvalidError,
    PreconditionFailedError,
    SecretKeyError,
)
from runner.config_model import Activation, ConfigDocument
from runner.config_secrets import SecretBox
from runner.config_settings import ConfigSettings
from runner.pg import CHANNEL, PgConfigStore
from tests.runner.test_config_store import set_plugin, set_value

PLUGIN = "p"


def secret_fields(plugin_id: str) -> frozenset[str]:
    return frozenset({"token"}) if plugin_id == PLUGIN else frozenset()


def settings_in(tmp_path: Path, backups: int = 3) -> ConfigSettings:
    return ConfigSettings(
        path=tmp_path / "config" / "corral.config.json",
        secret_key_file=tmp_path / "keys" / "secret.key",
        backups=backups,
    )


async def open_store(pool: asyncpg.Pool, url: str, settings: ConfigSettings) -> PgConfigStore:
    return await PgConfigStore.open(pool, url, settings, secret_fields=secret_fields)


@pytest.fixture
async def two_hosts(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> tuple[PgConfigStore, PgConfigStore]:
    """Two stores on two pools sharing one key file, as two hosts with the same key file."""
    settings = settings_in(tmp_path)
    first = await open_store(pools[0], migrated_url, settings)
    second = await open_store(pools[1], migrated_url, settings)
    return first, second


async def test_a_fresh_database_gets_the_default_document(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
) -> None:
    one, two = two_hosts
    assert (await one.load()).document == ConfigDocument()
    assert (await one.peek()).etag == (await two.peek()).etag
    assert one.version == two.version == 1
    assert one.path.startswith("postgresql://postgres@127.0.0.1:")


async def test_document_etag_conflict_is_a_precondition_failure_across_hosts(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
) -> None:
    one, two = two_hosts
    seen = await one.load()
    await two.update(set_value("n", 1))
    with pytest.raises(PreconditionFailedError) as info:
        await one.update(set_value("n", 2), expected_etag=seen.etag)
    assert info.value.scope == "document" and info.value.current == (await two.load()).etag
    fresh = await one.load()
    done = await one.update(set_value("n", 2), expected_etag=fresh.etag)
    assert (await two.peek()).etag == done.etag


async def test_plugin_etag_covers_only_its_subtree_across_hosts(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
) -> None:
    one, two = two_hosts
    absent = (await one.load()).plugin_etag("t1", "a")
    created = await one.update(
        set_plugin("t1", "a", {"x": 1}), expected_etag=absent, subtree=("t1", "a")
    )
    etag_a = created.plugin_etag("t1", "a")
    await two.update(set_plugin("t1", "b", {"y": 2}))
    await two.update(set_value("colour", "red"))
    assert (await one.load()).plugin_etag("t1", "a") == etag_a
    await two.update(set_plugin("t1", "a", {"x": 2}), expected_etag=etag_a, subtree=("t1", "a"))
    with pytest.raises(PreconditionFailedError) as info:
        await one.update(set_plugin("t1", "a", {"x": 3}), expected_etag=etag_a, subtree=("t1", "a"))
    assert info.value.scope == "t1/a"
    assert (await one.load()).document.tenants["t1"].settings.plugins["a"] == {"x": 2}


async def test_two_hosts_writing_the_same_tenant_lose_no_acknowledged_write(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
) -> None:
    one, two = two_hosts
    await asyncio.gather(
        *(s.update(set_value(f"{n}{i}", i)) for i in range(25) for n, s in (("a", one), ("b", two)))
    )
    extra = (await two.load()).document.tenants["t1"].settings.model_extra or {}
    assert extra == {f"{n}{i}": i for i in range(25) for n in "ab"}
    assert (await one.peek()).etag == (await two.peek()).etag


async def test_conditional_writes_from_two_hosts_exactly_one_wins(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
) -> None:
    one, two = two_hosts
    etag = (await one.load()).plugin_etag("t1", "a")
    results = await asyncio.gather(
        *(
            s.update(set_plugin("t1", "a", {"by": n}), expected_etag=etag, subtree=("t1", "a"))
            for n, s in (("one", one), ("two", two))
        ),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, PreconditionFailedError)]
    assert len(won) == 1 and len(lost) == 1
    stored = (await two.load()).document.tenants["t1"].settings.plugins["a"]
    assert stored == won[0].document.tenants["t1"].settings.plugins["a"]


async def test_secrets_are_encrypted_in_the_database_and_decrypted_for_workers(
    two_hosts: tuple[PgConfigStore, PgConfigStore], migrated_url: str
) -> None:
    one, two = two_hosts
    await one.update(set_plugin("t1", PLUGIN, {"token": "s3cret-value", "n": 1}))
    conn = await asyncpg.connect(migrated_url)
    try:
        rows = await conn.fetch("SELECT document FROM config_versions ORDER BY version")
        key_ids = [r["key_id"] for r in await conn.fetch("SELECT key_id FROM secret_keys")]
    finally:
        await conn.close()
    texts = [r["document"] for r in rows]
    assert not any("s3cret-value" in text for text in texts)
    latest = json.loads(texts[-1])
    assert "$enc" in latest["tenants"]["t1"]["settings"]["plugins"][PLUGIN]["token"]
    assert await two.plugin_config("t1", PLUGIN) == {"token": "s3cret-value", "n": 1}
    assert len(key_ids) == 1


async def test_a_host_with_another_key_file_refuses_to_start(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    migrated_url: str,
    tmp_path: Path,
) -> None:
    other = settings_in(tmp_path / "other")
    other.key_file.parent.mkdir(parents=True)
    with pytest.raises(SecretKeyError, match="copy their key file"):
        await open_store(pools[1], migrated_url, other)
    # A key file of its own (not the others') is refused too, not silently used.
    await asyncio.to_thread(SecretBox.open, other.key_file, create=True, strict_mode=False)
    with pytest.raises(SecretKeyError, match="same key file"):
        await open_store(pools[1], migrated_url, other)


async def test_each_commit_is_notified_with_its_version(
    two_hosts: tuple[PgConfigStore, PgConfigStore], migrated_url: str
) -> None:
    one, two = two_hosts
    listener = await asyncpg.connect(migrated_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[3]))
    try:
        first = one.version
        await one.update(set_value("a", 1))
        await two.update(set_value("b", 2))
        await two.update(set_value("b", 2))  # no change: no version, no notification
        await one.update(set_value("c", 3))
        got = [await asyncio.wait_for(heard.get(), 10) for _ in range(3)]
        assert got == [str(first + n) for n in (1, 2, 3)]
        assert heard.empty()
        assert (await two.refresh()).document.tenants["t1"].settings.model_extra == {
            "a": 1,
            "b": 2,
            "c": 3,
        }
    finally:
        await listener.close()


async def test_history_keeps_the_backups_and_a_version_can_be_restored(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
) -> None:
    one, two = two_hosts  # backups=3: four versions kept
    for i in range(6):
        await one.update(set_value("n", i))
    history = await two.history()
    assert [v.version for v in history] == [7, 6, 5, 4]
    restored = await two.roll_back_to(5)
    assert restored.document.tenants["t1"].settings.model_extra == {"n": 3}
    assert (await one.peek()).etag == restored.etag
    assert (await one.history())[0].reason == "rollback:5"
    with pytest.raises(ConfigInvalidError, match="not kept"):
        await one.roll_back_to(1)


async def test_a_damaged_current_version_is_rolled_back_at_open(
    two_hosts: tuple[PgConfigStore, PgConfigStore],
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    migrated_url: str,
    tmp_path: Path,
) -> None:
    one, _ = two_hosts
    await one.update(set_value("n", 1))
    good = (await one.load()).etag
    await one.update(set_value("n", 2))
    async with pools[0].acquire() as conn:
        await conn.execute(
            "UPDATE config_versions SET document = '{not json' WHERE version = $1", one.version
        )
    reopened = await open_store(pools[1], migrated_url, settings_in(tmp_path))
    assert (await reopened.peek()).etag == good
    assert (await reopened.history())[0].reason.startswith("rollback:")


async def test_activations_and_keys_are_visible_in_the_read_only_views(
    two_hosts: tuple[PgConfigStore, PgConfigStore], migrated_url: str
) -> None:
    one, _ = two_hosts

    def activate(doc: ConfigDocument) -> ConfigDocument:
        doc.tenant("t1").activations.append(Activation(plugin_id="a", enabled=True))
        return doc

    await one.update(activate)
    conn = await asyncpg.connect(migrated_url)
    try:
        rows = await conn.fetch("SELECT tenant_id, plugin_id, enabled FROM config_activations")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("t1", "a", True)]


async def test_key_rotation_reencrypts_every_kept_version(
    two_hosts: tuple[PgConfigStore, PgConfigStore], migrated_url: str
) -> None:
    one, two = two_hosts
    await one.update(set_plugin("t1", PLUGIN, {"token": "v1"}))
    await one.update(set_plugin("t1", PLUGIN, {"token": "v2"}))
    rotation = await one.rotate_secret_key()
    assert len(rotation.retired) == 1 and rotation.key_id not in rotation.retired
    conn = await asyncpg.connect(migrated_url)
    try:
        texts = [r["document"] for r in await conn.fetch("SELECT document FROM config_versions")]
        key_ids = [r["key_id"] for r in await conn.fetch("SELECT key_id FROM secret_keys")]
    finally:
        await conn.close()
    assert key_ids == [rotation.key_id]
    assert not any(old in text for text in texts for old in rotation.retired)
    assert await two.plugin_config("t1", PLUGIN) == {"token": "v2"}  # same key file here
