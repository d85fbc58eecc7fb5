"""Noisy neighbour: one tenant's worker spins, leaks and is flooded; another tenant is unharmed.

Both tenants run the same plugin (`tests/fixtures/plugins/noisy`), each in its own sandboxed
worker. Tenant N's webhook routes are flooded at bounded concurrency with calls that block its
worker's event loop (`/spin`) and that keep memory until the cgroup kills it (`/leak`). Tenant H
calls its `/ok` route all along: every one of its calls must be answered 200 within the route's
timeout. The test counts answers; latency figures come from `bench/noisy.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.runner.api_harness import NOISY, Api, running_api

from .conftest import Tally

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
]

H, N = "tenant-h", "tenant-n"
ROUTE_TIMEOUT_S = 3.0  # the `ok` route's timeout_seconds in the fixture's plugin.toml
NOISY_TIMEOUT_S = 1.0  # the `spin` and `leak` routes'
SLACK_S = 2.0  # what the host may add around a route's timeout (routing, a loaded machine)
FLOOD_S = 6.0
FLOOD_REQUESTS = 2000  # at most, at FLOOD_LANES at once
FLOOD_LANES = 48
HEALTHY_LANES = 2
NOISE = (("leak", b"48"), ("spin", b"150"), ("leak", b"48"), ("spin", b"400"), ("ok", b""))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api() -> AsyncIterator[Api]:
    # The per-(route, tenant) rate limit would turn most of the flood into cheap 429s: lifted,
    # so the noisy worker really is called as fast as the host can.
    async with running_api(environ={"CORRAL_WEBHOOK_RATE_PER_MINUTE": "100000000"}) as api:
        installed = await api.call(
            "POST", "/api/v1/admin/plugins", json_body={"path": str(api.state / "bundles/noisy")}
        )
        assert installed.status == 201, installed.text
        for tenant in (H, N):
            answer = await api.call(
                "PUT",
                f"/plugins/{NOISY}/config?tenant_id={tenant}",
                json_body={"enabled": True, "settings": {}},
            )
            assert answer.status == 200, answer.text
        yield api


def slot_of(api: Api, tenant: str) -> tuple[int | None, int]:
    """The (pid, restarts) of the tenant's one worker slot."""
    for status in api.service.host.supervisor.statuses():
        if (status.tenant_id, status.plugin_id) == (tenant, NOISY):
            (slot,) = status.slots
            return slot.pid, slot.restarts
    raise AssertionError(f"{NOISY} is not active for {tenant}")


async def post(api: Api, tenant: str, route: str, body: bytes, bound_s: float) -> int | str:
    """POST to the tenant's route; return the status, or the error a request ended with."""
    try:
        async with api.client.post(
            f"/webhook/noisy/{tenant}/{route}",
            data=body,
            timeout=aiohttp.ClientTimeout(total=bound_s),
        ) as response:
            await response.read()
            return response.status
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def test_a_healthy_tenant_keeps_answering_next_to_a_noisy_one(api: Api) -> None:
    assert await post(api, H, "ok", b"", ROUTE_TIMEOUT_S + SLACK_S) == 200
    h_pid, h_restarts = slot_of(api, H)
    healthy, noisy = Tally(), Tally()
    sent = itertools.count()
    noise = itertools.cycle(NOISE)
    deadline = time.monotonic() + FLOOD_S

    async def flood_lane() -> None:
        while time.monotonic() < deadline and next(sent) < FLOOD_REQUESTS:
            route, body = next(noise)
            timeout_s = ROUTE_TIMEOUT_S if route == "ok" else NOISY_TIMEOUT_S
            noisy.add(await post(api, N, route, body, timeout_s + SLACK_S))

    async def healthy_lane() -> None:
        while time.monotonic() < deadline:
            healthy.add(await post(api, H, "ok", b"", ROUTE_TIMEOUT_S + SLACK_S))

    async with asyncio.TaskGroup() as tasks:
        for _ in range(FLOOD_LANES):
            tasks.create_task(flood_lane())
        for _ in range(HEALTHY_LANES):
            tasks.create_task(healthy_lane())

    n_pid, n_restarts = slot_of(api, N)
    print(f"healthy {healthy}; noisy {noisy}; noisy restarts {n_restarts}")
    # H: every call answered by its plugin, none cut off by the route timeout or the bound.
    assert healthy.others({200}) == {} and healthy.total >= 20, healthy
    # N: every call answered by the host, whatever the answer, and its worker did misbehave.
    assert noisy.others({200, 502, 503, 504}) == {}, noisy
    assert noisy.total >= 150 and noisy.counts[200] > 0, noisy
    assert n_restarts >= 1 and sum(noisy.counts[s] for s in (502, 503, 504)) > 0, noisy
    # H's worker was never touched: same process, no restart.
    assert slot_of(api, H) == (h_pid, h_restarts)
    assert await post(api, H, "ok", b"", ROUTE_TIMEOUT_S + SLACK_S) == 200
