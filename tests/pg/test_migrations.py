"""Schema migrations against a real server: fresh, idempotent, concurrent, newer refused."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from runner.pg import (
    LATEST,
    SchemaOutdatedError,
    SchemaTooNewError,
    migrate,
    require_current,
    status,
)


async def test_a_fresh_database_is_migrated_to_the_latest_version(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        before = await status(conn)
        assert (before.current, before.pending) == (0, list(range(1, LATEST + 1)))
        with pytest.raises(SchemaOutdatedError, match="corral store migrate"):
            await require_current(conn)
        assert await migrate(conn) == list(range(1, LATEST + 1))
        after = await require_current(conn)
        assert after.is_current and after.pending == []
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        assert {"config_versions", "audit_records", "webhook_replay", "bundle_blobs"} <= tables
    finally:
        await conn.close()


async def test_migrating_again_applies_nothing(migrated_url: str) -> None:
    conn = await asyncpg.connect(migrated_url)
    try:
        assert await migrate(conn) == []
        assert len((await status(conn)).applied) == LATEST
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_step_exactly_once(pg_url: str) -> None:
    conns = [await asyncpg.connect(pg_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(results, key=len) == [[], [], [], list(range(1, LATEST + 1))]
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == LATEST
    finally:
        for conn in conns:
            await conn.close()


async def test_a_schema_newer_than_the_code_is_refused_and_left_alone(migrated_url: str) -> None:
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')",
            LATEST + 1,
        )
        with pytest.raises(SchemaTooNewError) as refused:
            await migrate(conn)
        assert (refused.value.current, refused.value.latest) == (LATEST + 1, LATEST)
        with pytest.raises(SchemaTooNewError, match="upgrade corral"):
            await require_current(conn)
        assert (await status(conn)).current == LATEST + 1
    finally:
        await conn.close()
