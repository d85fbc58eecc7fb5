"""Two real `corral serve` hosts on one PostgreSQL database behave as one.

A change made through one host reaches the other's workers; a signed webhook accepted by one is
refused by the other; a key revoked on one is refused by the other at its next request; writes
through both keep every acknowledged one; an install through one becomes usable on the other;
killing a host loses nothing; and a database outage refuses writes (503) while webhooks go on,
then the hosts resynchronize. Delays are polled up to a generous bound and printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from runner.pg import verify_database
from tests.fixtures.install.builders import checksum_of
from tests.pg.cluster import Cluster, start_server, stop_server
from tests.runner.daemon_harness import REPO, Daemon, running_daemon, wait_ready

pytestmark = pytest.mark.integration
ECHO = "dev.corral.test.echohooks"
SLUG = "echohooks"
TENANT = "tenant-a"
SECRET = "whsec-test-secret"
BOUND_S = 15.0  # "within a second" is measured and printed; this only bounds a failing wait
MANIFEST = f"""id = "{ECHO}"
version = "1.0.0"
display_name = "Echo hooks (multi-host test)"
protocol_version = 1
slug = "{SLUG}"
entrypoint = "echohooks"

[[categories]]
kind = "webhook_handler"

[[config]]
name = "greeting"
label = "Greeting"
required = true

[[config]]
name = "signing_secret"
label = "Signing secret"
secret = true

[[webhook]]
route_id = "echo"
path = "/echo"
methods = ["POST"]
verify = "plugin"
timeout_seconds = 10

[[webhook]]
route_id = "signed"
path = "/signed"
methods = ["POST"]
verify = "stripe"
secret_field = "signing_secret"
timeout_seconds = 10
"""
CODE = '''"""Answer every webhook with the greeting setting."""

from plugins.sdk import Plugin
from plugins.sdk.categories import WebhookRequest, WebhookResponse

plugin = Plugin()


@plugin.category("webhook_handler")
class Echo:
    def __init__(self, ctx: object) -> None:
        self.greeting = str(ctx.config["greeting"])  # type: ignore[attr-defined]

    async def handle(self, request: WebhookRequest) -> WebhookResponse:
        return WebhookResponse(status=200, headers={}, body=self.greeting.encode())
'''


@pytest.fixture
def shared_files() -> Any:
    """Trust files (shipped plugins + echohooks), the echohooks bundle, a key file path."""
    root = Path(tempfile.mkdtemp(prefix="corral-hosts-", dir="/tmp"))
    os.chmod(root, 0o755)
    bundle = root / "bundles" / "echohooks"
    bundle.mkdir(parents=True)
    (bundle / "plugin.toml").write_text(MANIFEST)
    (bundle / "echohooks.py").write_text(CODE)
    shipped = [p for p in (REPO / "plugins").iterdir() if (p / "plugin.toml").is_file()]
    lines = [f"{checksum_of(path)}  {path}\n" for path in (*shipped, bundle)]
    (root / "checksums.txt").write_text("".join(lines))
    allowlist = (REPO / "allowlist.toml").read_text()
    (root / "allowlist.toml").write_text(
        allowlist + f'\n[[plugin]]\nid = "{ECHO}"\nversions = ">=1.0.0"\n'
    )
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _env(url: str, root: Path) -> dict[str, str]:
    return {
        "CORRAL_STORE": url,
        "CORRAL_SECRET_KEY_FILE": str(root / "secret.key"),  # the same file for every host
        "CORRAL_ALLOWLIST_PATH": str(root / "allowlist.toml"),
        "CORRAL_CHECKSUMS_PATH": str(root / "checksums.txt"),
    }


@asynccontextmanager
async def two_hosts(url: str, root: Path) -> AsyncIterator[tuple[Daemon, Daemon, str]]:
    """Start host A (it creates the key file and the bootstrap key), then host B."""
    async with running_daemon(env=_env(url, root)) as a:
        await wait_ready(a)
        key = a.key
        async with running_daemon(env=_env(url, root)) as b:
            await wait_ready(b)
            yield a, b, key


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, bound_s: float = BOUND_S
) -> float:
    """Poll `check` until it holds; return how long it took (fail after `bound_s`)."""
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        with contextlib.suppress(aiohttp.ClientError):
            if await check():
                elapsed = time.monotonic() - start
                print(f"{what}: {elapsed * 1000:.0f} ms")
                return elapsed
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {bound_s} s")


async def _echo(http: aiohttp.ClientSession, host: Daemon) -> tuple[int, str]:
    async with http.post(f"{host.base}/webhook/{SLUG}/{TENANT}/echo", data=b"") as answer:
        return answer.status, await answer.text()


async def _pid(http: aiohttp.ClientSession, host: Daemon, key: str) -> int | None:
    async with http.get(f"{host.base}/api/v1/workers", headers={"X-API-Key": key}) as answer:
        workers = (await answer.json())["workers"]
    pids = [w["pid"] for w in workers if w["plugin_id"] == ECHO and w["state"] == "ready"]
    return pids[0] if len(pids) == 1 else None


async def _put(
    http: aiohttp.ClientSession,
    host: Daemon,
    key: str,
    settings: dict[str, Any],
    *,
    tenant: str = TENANT,
    etag: str | None = None,
    enabled: bool = True,
) -> aiohttp.ClientResponse:
    headers = {"X-API-Key": key} | ({"If-Match": etag} if etag else {})
    body = {"enabled": enabled, "settings": settings}
    async with http.put(
        f"{host.base}/plugins/{ECHO}/config?tenant_id={tenant}", json=body, headers=headers
    ) as answer:
        await answer.read()
        return answer


def _stripe(body: bytes) -> dict[str, str]:
    t = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={mac}"}


async def _document(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        text = await conn.fetchval("SELECT document::text FROM config_current")
    finally:
        await conn.close()
    document: dict[str, Any] = json.loads(text)
    return document


async def _install_and_configure(
    http: aiohttp.ClientSession, a: Daemon, root: Path, key: str
) -> None:
    headers = {"X-API-Key": key}
    bundle = str(root / "bundles" / "echohooks")
    async with http.post(
        f"{a.base}/api/v1/admin/plugins", json={"path": bundle}, headers=headers
    ) as done:
        assert done.status == 201, await done.text()
    put = await _put(http, a, key, {"greeting": "one", "signing_secret": SECRET})
    assert put.status == 200


async def test_hosts_follow_each_others_changes(migrated_url: str, shared_files: Path) -> None:
    async with (
        two_hosts(migrated_url, shared_files) as (a, b, key),
        aiohttp.ClientSession() as http,
    ):
        auth = {"X-API-Key": key}

        # An install through A becomes usable on B; A's config reaches B's workers.
        async def b_lists_echo() -> bool:
            async with http.get(f"{b.base}/plugins?tenant_id={TENANT}", headers=auth) as answer:
                return ECHO in [p["id"] for p in (await answer.json())["plugins"]]

        await _install_and_configure(http, a, shared_files, key)
        await _eventually(b_lists_echo, "install via A listed by B")
        await _eventually(lambda: _says(http, b, "one"), "activation via A served by B")
        before = await _pid(http, b, key)
        assert before is not None

        # A config change through A switches B's workers within a second or so.
        put = await _put(http, a, key, {"greeting": "two", "signing_secret": "***"})
        assert put.status == 200
        delay = await _eventually(lambda: _says(http, b, "two"), "config via A served by B")
        assert delay < BOUND_S
        after = await _pid(http, b, key)
        assert after is not None and after != before

        # A signed delivery accepted by A is refused when replayed to B.
        body = b'{"id": "evt_1"}'
        headers = _stripe(body)
        url = f"/webhook/{SLUG}/{TENANT}/signed"
        async with http.post(a.base + url, data=body, headers=headers) as first:
            assert first.status == 200 and await first.text() == "two"
        async with http.post(b.base + url, data=body, headers=headers) as replayed:
            assert replayed.status == 401
            assert (await replayed.json())["error"] == "invalid_signature"

        # A key created and revoked through A: B refuses it at its next request.
        create = {"name": "reader", "scopes": ["admin:plugins:read"]}
        async with http.post(f"{a.base}/api/v1/admin/keys", json=create, headers=auth) as made:
            created = await made.json()
        reader = {"X-API-Key": created["key"]}
        async with http.get(f"{b.base}/plugins?tenant_id={TENANT}", headers=reader) as ok:
            assert ok.status == 200
        revoke = f"{a.base}/api/v1/admin/keys/{created['record']['id']}"
        async with http.delete(revoke, headers=auth) as revoked:
            assert revoked.status == 200
        async with http.get(f"{b.base}/plugins?tenant_id={TENANT}", headers=reader) as refused:
            assert refused.status == 401

        # Concurrent writes through A and B: every acknowledged one is kept.
        writes = [
            _put(http, (a, b)[i % 2], key, {"greeting": f"g{i}"}, tenant=f"t{i}", enabled=False)
            for i in range(12)
        ]
        answers = await asyncio.gather(*writes)
        assert [r.status for r in answers] == [200] * 12
        tenants = (await _document(migrated_url))["tenants"]
        assert all(
            tenants[f"t{i}"]["settings"]["plugins"][ECHO]["greeting"] == f"g{i}" for i in range(12)
        )
        # Two conditional writes with the same ETag: one wins, the other is told (412).
        etag = put.headers["ETag"]
        racing = await asyncio.gather(
            _put(http, a, key, {"greeting": "from-a", "signing_secret": "***"}, etag=etag),
            _put(http, b, key, {"greeting": "from-b", "signing_secret": "***"}, etag=etag),
        )
        assert sorted(r.status for r in racing) == [200, 412]
        winner = "from-a" if racing[0].status == 200 else "from-b"
        await _eventually(lambda: _says(http, a, winner), "winner served by A")
        await _eventually(lambda: _says(http, b, winner), "winner served by B")

        # Killing A mid-stream loses no acknowledged write, and B keeps serving.
        acknowledged: list[int] = []

        async def stream() -> None:
            for i in range(1000):
                settings = {"greeting": f"k{i}"}
                answer = await _put(http, a, key, settings, tenant="killed", enabled=False)
                if answer.status == 200:
                    acknowledged.append(i)

        writer = asyncio.create_task(stream())
        await _eventually(lambda: _true(len(acknowledged) >= 3), "writes through A")
        for child in a.descendants():
            child.kill()
        a.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(aiohttp.ClientError):
            await writer
        await a.exit_status()
        last = (await _document(migrated_url))["tenants"]["killed"]["settings"]["plugins"][ECHO]
        assert int(last["greeting"][1:]) >= acknowledged[-1]
        print(f"{len(acknowledged)} writes acknowledged before SIGKILL; last kept: {last}")
        assert await _says(http, b, winner)
        async with http.get(f"{b.base}/readyz") as ready:
            assert ready.status == 200


async def test_a_database_outage_refuses_writes_and_keeps_webhooks(
    migrated_url: str, shared_files: Path, pg_cluster: Cluster
) -> None:
    async with (
        two_hosts(migrated_url, shared_files) as (a, b, key),
        aiohttp.ClientSession() as http,
    ):
        auth = {"X-API-Key": key}
        await _install_and_configure(http, a, shared_files, key)
        await _eventually(lambda: _says(http, b, "one"), "activation via A served by B")

        # Backends terminated: each host reconnects and still follows the other.
        conn = await asyncpg.connect(pg_cluster.url())
        try:
            name = migrated_url.rsplit("/", 1)[1]
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
        finally:
            await conn.close()
        print(f"terminated {killed} backend(s)")

        async def written() -> bool:  # a write on a connection killed under it answers 503
            settings = {"greeting": "after-kill", "signing_secret": "***"}
            return (await _put(http, b, key, settings)).status == 200

        await _eventually(written, "a write through B after the terminations")
        await _eventually(lambda: _says(http, a, "after-kill"), "change via B after terminations")

        # The database stops: writes answer 503, reads and unsigned webhooks go on.
        await asyncio.to_thread(stop_server, pg_cluster)
        try:
            put = await _put(http, a, key, {"greeting": "refused", "signing_secret": "***"})
            assert put.status == 503
            refused = await _put(
                http, b, key, {"greeting": "refused"}, tenant="other", enabled=False
            )
            assert refused.status == 503
            create = {"name": "x", "scopes": ["admin:plugins:read"]}
            async with http.post(f"{a.base}/api/v1/admin/keys", json=create, headers=auth) as made:
                assert made.status == 503
                assert (await made.json())["error"] == "store_unavailable"
            assert await _says(http, a, "after-kill") and await _says(http, b, "after-kill")
            body = b'{"id": "evt_outage"}'
            async with http.post(
                f"{a.base}/webhook/{SLUG}/{TENANT}/signed", data=body, headers=_stripe(body)
            ) as signed:
                assert signed.status == 503  # no shared replay check: refused, the sender retries
                assert (await signed.json())["error"] == "store_unavailable"
            async with http.get(
                f"{a.base}/plugins/{ECHO}/config?tenant_id={TENANT}", headers=auth
            ) as read:
                assert read.status == 200
            async with http.get(f"{a.base}/readyz") as ready:
                assert ready.status == 503
                checks = {c["name"]: c for c in (await ready.json())["checks"]}
                assert checks["database"]["ok"] is False
                print("readyz while down:", checks["database"]["detail"])
        finally:
            await asyncio.to_thread(start_server, pg_cluster)

        # Back: both hosts resynchronize; a change via B reaches A; the audit backlog is in.
        async def ready(host: Daemon) -> bool:
            async with http.get(f"{host.base}/readyz") as answer:
                return answer.status == 200

        await _eventually(lambda: ready(a), "A ready again")
        put = await _put(http, b, key, {"greeting": "back", "signing_secret": "***"})
        assert put.status == 200
        await _eventually(lambda: _says(http, a, "back"), "change via B after the outage")

        async def outage_records() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(migrated_url)
            try:
                rows = await conn.fetch("SELECT record FROM audit_records ORDER BY seq")
            finally:
                await conn.close()
            return [
                record
                for row in rows
                if (record := json.loads(row["record"]))["action"]
                in ("plugin.config.put", "key.create")
                and record["details"].get("status") == 503
            ]

        # A host appends its backlog before its next record, and records an act after answering
        # it: the three refused writes (two on A, one on B) land shortly after the answers.
        async def backlog_in() -> bool:
            return len(await outage_records()) >= 3

        await _eventually(backlog_in, "the outage's audit records appended")
        conn = await asyncpg.connect(migrated_url)
        try:
            chain = await verify_database(conn)
        finally:
            await conn.close()
        assert chain.is_intact, chain.problems


async def _says(http: aiohttp.ClientSession, host: Daemon, greeting: str) -> bool:
    status, text = await _echo(http, host)
    return status == 200 and text == greeting


async def _true(value: bool) -> bool:
    return value
