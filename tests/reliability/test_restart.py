"""Restart, and config under fire: SIGKILL `corral serve` under load, start it again, twice.

Load is webhook traffic to every activation plus concurrent config writes through the admin API
from several keys (each its own tenant's subtree, acknowledged one by one). After each SIGKILL:
no process of the killed run survives it (its fork-server and workers die with it: parent-death
signal, stdin EOF), and the host started again on the same state directory comes back with every
activation ready on new processes, a valid store holding every acknowledged write, and webhooks
answering. (The store's own crash safety, with the writer killed at random moments mid-write, is
`tests/runner/test_config_crash.py`.)
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import aiohttp
import pytest

from tests.runner.phaxio_stub import callback_body, fax_resource, phaxio_signature

from .conftest import Served, Tally, new_state_dir, served, wait_all_gone

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

PHAXIO, TWILIO = "dev.corral.phaxio-fax", "dev.corral.twilio-sms"
ACTIVE = [f"tenant-r{i}" for i in range(4)]  # Phaxio for each; Twilio for the first two
WRITERS = 3
LOAD_S = 2.0
ROUNDS = 2
GONE_BOUND_S = 5.0
SCOPES = ["admin:plugins:read", "admin:plugins:write", "keys:manage"]


def phaxio_settings(tenant: str, serial: int = 0) -> dict[str, Any]:
    return {
        "api_key": f"key-{serial}",
        "api_secret": f"secret-of-{tenant}-" + "9" * 16,
        "callback_token": f"token-of-{tenant}-" + "7" * 16,
        "caller_id": "+15550001111",
    }


async def put(http: aiohttp.ClientSession, host: Served, key: str, path: str, body: Any) -> int:
    async with http.put(host.url(path), json=body, headers={"X-API-Key": key}) as answer:
        await answer.read()
        return answer.status


async def activate(host: Served, http: aiohttp.ClientSession) -> list[str]:
    """Activate the plugins and create the writers' keys; return the keys."""
    twilio = {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32, "from_number": "+15550001111"}
    for tenant in ACTIVE:
        path = f"/plugins/{PHAXIO}/config?tenant_id={tenant}"
        body = {"enabled": True, "settings": phaxio_settings(tenant)}
        assert await put(http, host, host.key, path, body) == 200
    for tenant in ACTIVE[:2]:
        path = f"/plugins/{TWILIO}/config?tenant_id={tenant}"
        body = {"enabled": True, "settings": twilio}
        assert await put(http, host, host.key, path, body) == 200
    keys = []
    for n in range(WRITERS):
        async with http.post(
            host.url("/api/v1/admin/keys"),
            json={"name": f"writer-{n}", "scopes": SCOPES},
            headers={"X-API-Key": host.key},
        ) as answer:
            assert answer.status == 201, await answer.text()
            keys.append((await answer.json())["key"])
    return keys


async def workers(host: Served, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(host.url("/api/v1/workers"), headers={"X-API-Key": host.key}) as answer:
        assert answer.status == 200
        return {w["id"]: w for w in (await answer.json())["workers"]}


async def load(
    host: Served, http: aiohttp.ClientSession, keys: list[str], acked: dict[str, int], hooks: Tally
) -> None:
    """Write config from every key and post webhooks until the host is killed under it."""
    deadline = time.monotonic() + LOAD_S

    async def writer(n: int, key: str) -> None:
        tenant = f"tenant-w{n}"
        serial = acked.get(tenant, 0)
        path = f"/plugins/{PHAXIO}/config?tenant_id={tenant}"
        while True:
            serial += 1
            body = {"enabled": False, "settings": phaxio_settings(tenant, serial)}
            try:
                status = await put(http, host, key, path, body)
            except aiohttp.ClientError:
                return  # the host is gone: this write was never acknowledged
            assert status == 200, status
            acked[tenant] = serial

    async def poster(n: int) -> None:
        for i in range(1 << 30):
            tenant = ACTIVE[(n + i) % len(ACTIVE)]
            body = callback_body(fax_resource(i, "success"))
            signature = phaxio_signature(f"token-of-{tenant}-" + "7" * 16, body)
            try:
                async with http.post(
                    host.url(f"/webhook/phaxio/{tenant}/fax-status"),
                    data=body,
                    headers={"X-Phaxio-Signature": signature},
                ) as answer:
                    await answer.read()
                    hooks.add(answer.status)
            except aiohttp.ClientError:
                return

    async def killer() -> None:
        await asyncio.sleep(LOAD_S)
        assert time.monotonic() >= deadline
        await host.kill()

    async with asyncio.TaskGroup() as tasks:
        for n, key in enumerate(keys):
            tasks.create_task(writer(n, key))
        for n in range(2):
            tasks.create_task(poster(n))
        tasks.create_task(killer())


async def check_restored(
    host: Served, http: aiohttp.ClientSession, old_pids: set[int], acked: dict[str, int]
) -> None:
    """Every activation ready on a new process, every acknowledged write there, hooks answer."""
    deadline = time.monotonic() + 30
    while True:
        listed = await workers(host, http)
        ready = [w for w in listed.values() if w["state"] == "ready" and w["pid"]]
        if len(ready) == len(ACTIVE) + 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(ready) == len(ACTIVE) + 2, listed
    assert {w["pid"] for w in ready}.isdisjoint(old_pids)
    for tenant, serial in acked.items():
        async with http.get(
            host.url(f"/plugins/{PHAXIO}/config?tenant_id={tenant}"),
            headers={"X-API-Key": host.key},
        ) as answer:
            stored = (await answer.json())["settings"]["api_key"]
        # The last acknowledged write, or the one in flight when the host died.
        assert stored in (f"key-{serial}", f"key-{serial + 1}"), (tenant, serial, stored)
    for tenant in ACTIVE:
        body = callback_body(fax_resource(1, "success"))
        signature = phaxio_signature(f"token-of-{tenant}-" + "7" * 16, body)
        async with http.post(
            host.url(f"/webhook/phaxio/{tenant}/fax-status"),
            data=body,
            headers={"X-Phaxio-Signature": signature},
        ) as answer:
            assert answer.status == 200, await answer.text()


async def test_sigkilled_under_load_the_host_comes_back_whole_and_leaves_no_orphan() -> None:
    state = new_state_dir()
    acked: dict[str, int] = {}
    hooks = Tally()
    figures = []
    try:
        async with aiohttp.ClientSession() as http:
            async with served(state) as host:
                keys = await activate(host, http)
                await load(host, http, keys, acked, hooks)
                killed = host.run_marks
            for _ in range(ROUNDS):
                old_pids = {m.pid for m in killed}
                assert len(killed) >= len(ACTIVE) + 2  # the fork-server and every worker
                assert await wait_all_gone(killed, GONE_BOUND_S) == []
                started = time.monotonic()
                async with served(state) as host:
                    ready_s = time.monotonic() - started
                    await check_restored(host, http, old_pids, acked)
                    figures.append((ready_s, time.monotonic() - started))
                    await load(host, http, keys, acked, hooks)
                    killed = host.run_marks
            assert await wait_all_gone(killed, GONE_BOUND_S) == []
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(
        "\nrestarts (ready, all activations ready): "
        + ", ".join(f"{a:.1f} s / {b:.1f} s" for a, b in figures)
        + f"; acknowledged writes {acked}; webhooks under load {hooks}"
    )
    assert hooks.others({200}) == {}, hooks
    assert all(serial >= 5 for serial in acked.values()), acked
