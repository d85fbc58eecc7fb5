"""The audit chain in PostgreSQL: one chain appended from two hosts, verified; edits found."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from runner.audit import AuditFieldError, AuditLog, AuditSettings, line_hash
from runner.cli import main
from runner.pg import PgAuditSink, verify_database
from tests.pg.cluster import Cluster, start_server, stop_server


def audit_log(pool: asyncpg.Pool, url: str, tmp_path: Path) -> AuditLog:
    return AuditLog(AuditSettings(path=tmp_path / "unused.log"), PgAuditSink(pool, url))


async def test_two_hosts_append_to_one_chain_that_verifies(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> None:
    logs = [audit_log(pool, migrated_url, tmp_path) for pool in pools]
    records = await asyncio.gather(
        *(
            log.record("config.update", tenant="t1", details={"host": n, "i": i})
            for i in range(30)
            for n, log in enumerate(logs)
        )
    )
    assert sorted(r["seq"] for r in records) == list(range(1, 61))
    assert all(r["hash"] == line_hash(r) for r in records)
    assert not (tmp_path / "unused.log").exists()
    conn = await asyncpg.connect(migrated_url)
    try:
        report = await verify_database(conn)
    finally:
        await conn.close()
    assert report.is_intact, report.problems
    assert (report.lines, report.head_seq) == (60, 60)


async def test_a_bad_field_is_refused_before_the_database(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> None:
    log = audit_log(pools[0], migrated_url, tmp_path)
    with pytest.raises(AuditFieldError):
        await log.record("Bad Action")
    async with pools[0].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_records") == 0


async def test_the_table_is_append_only_and_an_edit_is_found(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str, tmp_path: Path
) -> None:
    log = audit_log(pools[0], migrated_url, tmp_path)
    for i in range(5):
        await log.record("key.create", details={"i": i})
    async with pools[0].acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_records WHERE seq = 5")
        # Someone with the rights to drop the guard: the chain still tells.
        await conn.execute("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
        record = json.loads(await conn.fetchval("SELECT record FROM audit_records WHERE seq = 3"))
        record["outcome"] = "failure"
        edited = json.dumps(record, sort_keys=True, separators=(",", ":"))
        await conn.execute("UPDATE audit_records SET record = $1 WHERE seq = 3", edited)
        await conn.execute("DELETE FROM audit_records WHERE seq = 5")
        report = await verify_database(conn)
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["edited", "missing"]


def test_corral_audit_verify_checks_the_database_when_the_store_is_postgresql(
    migrated_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def append() -> None:
        pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
        try:
            await audit_log(pool, migrated_url, tmp_path).record("host.start")
        finally:
            await pool.close()

    asyncio.run(append())
    monkeypatch.setenv("CORRAL_STORE", migrated_url)
    monkeypatch.delenv("CORRAL_CONFIG_FILE", raising=False)
    assert main(["audit", "verify", "--json", "--state-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["intact"] and out["lines"] == 1 and out["files"] == ["audit_records"]


async def test_a_backlog_reaches_the_chain_without_waiting_for_another_act(
    pg_cluster: Cluster, migrated_url: str, tmp_path: Path
) -> None:
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    sink = PgAuditSink(pool, migrated_url)
    log = AuditLog(AuditSettings(path=tmp_path / "unused.log"), sink)
    try:
        await log.record("config.update", tenant="t1", details={"when": "before"})
        await asyncio.to_thread(stop_server, pg_cluster)
        try:
            await log.record("config.update", tenant="t1", details={"when": "during"})
            assert sink.backlog == 1
        finally:
            await asyncio.to_thread(start_server, pg_cluster)
        async with asyncio.timeout(30):  # no further record, no flush(): the sink retries
            while sink.backlog:
                await asyncio.sleep(0.05)
        conn = await asyncpg.connect(migrated_url)
        try:
            rows = await conn.fetch("SELECT record FROM audit_records ORDER BY seq")
            report = await verify_database(conn)
        finally:
            await conn.close()
        assert [json.loads(r["record"])["details"]["when"] for r in rows] == ["before", "during"]
        assert report.is_intact, report.problems
    finally:
        await sink.close()
        await pool.close()
