"""Chaos: workers are SIGKILLed at random while webhook traffic flows; nothing hangs or is lost.

Several tenants each run the hooks fixture in a sandboxed worker. A few client lanes call their
webhook routes without pause while a killer SIGKILLs a random ready worker about every half
second. Every request must get an answer within its bound: the plugin's 200, or 502/503 for the
calls that were in flight on (or arrived at) a worker just killed. At the end every activation
must be back: each slot ready, each killed worker replaced by a new process.

Kills per slot stay below the crash-loop circuit's threshold (more than 5 restarts in 60 s), so
this is the supervisor's restart path under load, not the circuit (tested in tests/runner/).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.runner.api_harness import HOOKS, Api, running_api

from .conftest import Tally

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
]

TENANTS = [f"tenant-c{i}" for i in range(6)]
ROUTE_TIMEOUT_S = 1.0  # the hooks fixture's `open` route
SLACK_S = 3.0
TRAFFIC_S = 10.0
LANES = 4
KILL_EVERY_S = (0.3, 0.7)
MAX_KILLS_PER_SLOT = 4  # the circuit opens past 5 restarts within 60 s
RESTORE_TIMEOUT_S = 30.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api() -> AsyncIterator[Api]:
    async with running_api(environ={"CORRAL_WEBHOOK_RATE_PER_MINUTE": "100000000"}) as api:
        installed = await api.call(
            "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
        )
        assert installed.status == 201, installed.text
        for tenant in TENANTS:
            answer = await api.call(
                "PUT",
                f"/plugins/{HOOKS}/config?tenant_id={tenant}",
                json_body={"enabled": True, "settings": {"secret": f"secret-of-{tenant}"}},
            )
            assert answer.status == 200, answer.text
        yield api


async def hooks_workers(api: Api) -> dict[str, dict[str, object]]:
    """The hooks fixture's worker slots, by id, as the admin API lists them."""
    answer = await api.call("GET", "/api/v1/workers")
    assert answer.status == 200, answer.text
    return {w["id"]: w for w in answer.body["workers"] if w["plugin_id"] == HOOKS}


async def test_random_sigkills_under_traffic_lose_no_answer_and_every_worker_comes_back(
    api: Api,
) -> None:
    before = await hooks_workers(api)
    assert len(before) == len(TENANTS) and {w["state"] for w in before.values()} == {"ready"}
    rng = random.Random(os.getpid())
    answers = Tally()
    kills: dict[str, list[int]] = {}
    deadline = time.monotonic() + TRAFFIC_S

    async def lane(index: int) -> None:
        for n in range(index, 1 << 30, LANES):
            if time.monotonic() >= deadline:
                return
            tenant = TENANTS[n % len(TENANTS)]
            try:
                async with api.client.post(
                    f"/webhook/hooks/{tenant}/open",
                    data=b"x",
                    timeout=aiohttp.ClientTimeout(total=ROUTE_TIMEOUT_S + SLACK_S),
                ) as response:
                    await response.read()
                    answers.add(response.status)
            except TimeoutError:
                answers.add("timeout")
            except aiohttp.ClientError as exc:
                answers.add(type(exc).__name__)

    async def killer() -> None:
        while time.monotonic() < deadline - 1.0:  # the last second lets the last kill show
            await asyncio.sleep(rng.uniform(*KILL_EVERY_S))
            workers = await hooks_workers(api)
            targets = [
                (slot_id, w["pid"])
                for slot_id, w in workers.items()
                if w["state"] == "ready"
                and isinstance(w["pid"], int)
                and len(kills.get(slot_id, [])) < MAX_KILLS_PER_SLOT
            ]
            if not targets:
                continue
            slot_id, pid = rng.choice(targets)
            os.kill(pid, signal.SIGKILL)
            kills.setdefault(slot_id, []).append(pid)

    async with asyncio.TaskGroup() as tasks:
        for index in range(LANES):
            tasks.create_task(lane(index))
        tasks.create_task(killer())

    killed = {pid for pids in kills.values() for pid in pids}
    print(f"{len(killed)} workers SIGKILLed over {len(kills)} slots; answers {answers}")
    assert len(killed) >= 10, kills
    # Every request answered within its bound, and only as the contract allows.
    assert answers.others({200, 502, 503}) == {}, answers
    assert answers.counts[200] >= 10 * len(killed), answers
    # The supervisor restores every activation: all ready, on new processes.
    restore_deadline = time.monotonic() + RESTORE_TIMEOUT_S
    while True:
        after = await hooks_workers(api)
        ready = {i: w for i, w in after.items() if w["state"] == "ready" and w["pid"]}
        if len(ready) == len(TENANTS) or time.monotonic() > restore_deadline:
            break
        await asyncio.sleep(0.1)
    assert set(ready) == set(before), after
    for slot_id, pids in kills.items():
        assert ready[slot_id]["pid"] not in pids, (slot_id, pids, ready[slot_id])
        assert ready[slot_id]["restarts"] >= len(pids)
    for slot_id in set(before) - set(kills):
        assert ready[slot_id]["pid"] == before[slot_id]["pid"]
    # And each one answers again.
    for tenant in TENANTS:
        async with api.client.post(f"/webhook/hooks/{tenant}/open", data=b"x") as response:
            assert response.status == 200
            assert (await response.json())["tenant"] == tenant
