"""A real `corral serve` on PostgreSQL: ready, and a config PUT lands in the database."""

from __future__ import annotations

import json

import aiohttp
import asyncpg
import pytest

from tests.runner.daemon_harness import SLOW, running_daemon, wait_ready

pytestmark = pytest.mark.integration
TENANT = "tenant-a"


async def test_corral_serve_runs_on_postgresql(migrated_url: str) -> None:
    async with running_daemon(env={"CORRAL_STORE": migrated_url}) as daemon:
        await wait_ready(daemon)
        headers = {"X-API-Key": daemon.key}
        async with aiohttp.ClientSession(daemon.base, headers=headers) as http:
            async with http.get("/readyz") as ready:
                checks = {c["name"]: c for c in (await ready.json())["checks"]}
            assert checks["config_store"]["detail"].startswith("postgresql://postgres@127.0.0.1")
            bundle = str(daemon.state / "bundles" / "slowhooks")
            async with http.post("/api/v1/admin/plugins", json={"path": bundle}) as installed:
                assert installed.status == 201, await installed.text()
            body = {"enabled": True, "settings": {}}
            async with http.put(f"/plugins/{SLOW}/config?tenant_id={TENANT}", json=body) as put:
                assert put.status == 200, await put.text()
                assert put.headers["ETag"]
            stale = {"If-Match": '"0000"'}  # the same ETag contract as the JSON store
            async with http.put(
                f"/plugins/{SLOW}/config?tenant_id={TENANT}", json=body, headers=stale
            ) as refused:
                assert refused.status == 412
        conn = await asyncpg.connect(migrated_url)
        try:
            document = json.loads(await conn.fetchval("SELECT document::text FROM config_current"))
            audited = await conn.fetch("SELECT record FROM audit_records ORDER BY seq")
            shared = await conn.fetchval(
                "SELECT count(*) FROM installed_bundles WHERE plugin_id = $1", SLOW
            )
        finally:
            await conn.close()
        tenant = document["tenants"][TENANT]
        assert tenant["settings"]["plugins"][SLOW] == {}
        assert [a["plugin_id"] for a in tenant["activations"]] == [SLOW]
        actions = [json.loads(r["record"])["action"] for r in audited]
        assert "host.start" in actions and shared == 1
        assert not list(daemon.state.rglob("corral.config.json"))  # no JSON document written
        assert not list(daemon.state.rglob("audit.log"))


async def test_corral_serve_refuses_a_schema_with_pending_migrations(pg_url: str) -> None:
    async with running_daemon(env={"CORRAL_STORE": pg_url}) as daemon:
        status = await daemon.exit_status()
    assert status != 0
    assert "corral store migrate" in "".join(daemon.stderr)
