"""`/metrics` end to end: a real service and workers; the exposition is read with Prometheus's
own parser, after real webhook calls, a crash, an egress denial, restarts and 429s."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol import load_manifest
from runner.errors import WorkerStartError
from runner.metrics import MetricsSettingsError, metrics_public_from_env
from runner.ratelimit import RateLimitSettings
from runner.restart_policy import RestartSettings
from runner.slot_types import WatchSettings, WorkerState
from runner.supervisor import ActivationSpec, Supervisor
from runner.worker import PluginWorker
from tests.runner.api_harness import (
    GENEROUS,
    HOOKS,
    HOOKS_FIXTURE,
    REPO,
    Answer,
    Api,
    running_api,
)

pytestmark = pytest.mark.integration

TENANT = "tenant-m"
WORKER = f"{TENANT}:{HOOKS}"
WRITES_PER_MINUTE = 4
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(api: Api, key: str | None = "bootstrap") -> Samples:
    answer = await api.call("GET", "/metrics", key=key)
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(answer.text)


async def hook(api: Api, route: str, body: bytes) -> Answer:
    return await api.call(
        "POST", f"/webhook/hooks/{TENANT}/{route}", key=None, data=body, check_documented=False
    )


def hooks_pids(api: Api) -> set[int | None]:
    statuses = api.service.host.supervisor.statuses()
    return {s.pid for a in statuses if a.plugin_id == HOOKS for s in a.slots}


async def wait_ready(api: Api, replacing: set[int | None]) -> None:
    """Wait until every hooks slot is ready on a worker that is not one of `replacing`."""
    for _ in range(200):
        statuses = api.service.host.supervisor.statuses()
        slots = [s for a in statuses if a.plugin_id == HOOKS for s in a.slots]
        if slots and all(
            s.state is WorkerState.READY and s.pid and s.pid not in replacing for s in slots
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the hooks worker did not come back")


async def test_metrics_count_webhooks_crashes_egress_restarts_429s_and_refusals() -> None:
    limits = RateLimitSettings(
        reads_per_minute=GENEROUS.reads_per_minute,
        writes_per_minute=WRITES_PER_MINUTE,
        failed_auth_per_minute=GENEROUS.failed_auth_per_minute,
    )
    environ = {"CORRAL_WEBHOOK_RATE_PER_MINUTE": "3"}
    async with running_api(environ=environ, rate_limits=limits) as api:
        # Bootstrap writes: install, config, restart (3 of its 4).
        installed = await api.call(
            "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
        )
        assert installed.status == 201, installed.text
        put = await api.call(
            "PUT",
            f"/plugins/{HOOKS}/config?tenant_id={TENANT}",
            json_body={"enabled": True, "settings": {"secret": "metrics-secret"}},
        )
        assert put.status == 200, put.text

        before = await scrape(api)
        assert value(before, "corral_workers", plugin=HOOKS, state="ready") == 1
        assert value(before, "corral_workers", plugin=HOOKS, state="backoff") == 0

        # The open route's budget is 3 a minute: ok, crash (502), ok again, then 429.
        assert (await hook(api, "open", b"hi")).status == 200
        crashed = hooks_pids(api)
        assert (await hook(api, "open", b"crash")).status == 502
        await wait_ready(api, replacing=crashed)
        assert (await hook(api, "open", b"hi")).status == 200
        assert (await hook(api, "open", b"hi")).status == 429
        # An egress denial, answered 200 by the plugin (another route, its own budget).
        fetched = await hook(api, "fetch", b"https://evil.example/")
        assert fetched.body["data"]["reason"] == "host_not_permitted"
        # An operator restart.
        restarted = await api.call("POST", f"/api/v1/workers/{WORKER}/restart")
        assert restarted.status == 200, restarted.text
        # An install refusal: the echo fixture is in neither checksums.txt nor the allowlist.
        refused = await api.call(
            "POST",
            "/api/v1/admin/plugins",
            json_body={"path": str(REPO / "tests" / "fixtures" / "plugins" / "echo")},
        )
        assert refused.status >= 400
        # An admin 429: another key spends its own write budget on 404s.
        other = await api.new_key()
        statuses = [
            (await api.call("POST", "/api/v1/workers/t:none/restart", key=other)).status
            for _ in range(WRITES_PER_MINUTE + 1)
        ]
        assert statuses == [404] * WRITES_PER_MINUTE + [429]

        samples = await scrape(api)

    def counter(name: str, **labels: str) -> float | None:
        return value(samples, f"{name}_total", **labels)

    assert counter("corral_webhook_responses", plugin=HOOKS, code="200") == 3
    assert counter("corral_webhook_responses", plugin=HOOKS, code="502") == 1
    assert counter("corral_webhook_responses", plugin=HOOKS, code="429") == 1
    assert counter("corral_rate_limited", limiter="webhook") == 1
    assert counter("corral_rate_limited", limiter="admin_write") == 1
    assert counter("corral_rate_limited", limiter="admin_read") == 0
    assert counter("corral_rate_limited", limiter="failed_auth") == 0
    denied = {"plugin": HOOKS, "outcome": "denied", "reason": "host_not_permitted"}
    assert counter("corral_egress_requests", **denied) == 1
    assert counter("corral_worker_restarts", plugin=HOOKS, reason="exited") == 1
    assert counter("corral_worker_restarts", plugin=HOOKS, reason="operator") == 1
    refusal = (
        "corral_install_refusals_total",
        frozenset({("stage", "install"), ("reason", refused.body["error"])}),
    )
    assert samples[refusal] - before.get(refusal, 0) == 1  # shipped bundles may be refused too
    # Every call that reached a worker, the crashed one included; the 429 never did.
    rpc = {"plugin": HOOKS, "method": "webhook_handler.handle"}
    assert value(samples, "corral_rpc_duration_seconds_count", **rpc) == 4
    assert value(samples, "corral_rpc_duration_seconds_bucket", **rpc, le="+Inf") == 4
    assert value(samples, "corral_workers", plugin=HOOKS, state="ready") == 1
    assert value(samples, "corral_workers", plugin=HOOKS, state="circuit_open") == 0
    assert not any(TENANT in dict(labels).values() for _, labels in samples)  # no tenant labels


async def test_metrics_need_an_operator_read_key_unless_public(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_api() as api:
        assert (await api.call("GET", "/metrics", key=None)).status == 401
        tenant_key = await api.new_key(tenant_id="acme")
        assert (await api.call("GET", "/metrics", key=tenant_key)).status == 403
        samples = await scrape(api)
        assert value(samples, "corral_rate_limited_total", limiter="webhook") == 0
        assert "/metrics" in api.openapi["paths"]
    monkeypatch.setenv("CORRAL_METRICS_PUBLIC", "true")
    async with running_api() as api:
        await scrape(api, key=None)
        assert "security" not in api.openapi["paths"]["/metrics"]["get"]


def test_metrics_public_setting_is_read_strictly() -> None:
    assert metrics_public_from_env({}) is False
    assert metrics_public_from_env({"CORRAL_METRICS_PUBLIC": "TRUE"}) is True
    assert metrics_public_from_env({"CORRAL_METRICS_PUBLIC": "0"}) is False
    with pytest.raises(MetricsSettingsError):
        metrics_public_from_env({"CORRAL_METRICS_PUBLIC": "maybe"})


async def test_a_crash_looping_slot_counts_its_start_failures_and_circuit_opening() -> None:
    async def failing_start(spec: ActivationSpec) -> PluginWorker:
        raise WorkerStartError(spec.plugin_id, "verification failed: modified")

    supervisor = Supervisor(
        failing_start,
        watch=WatchSettings(),
        restart=RestartSettings(circuit_max_restarts=0, circuit_cooldown_s=60.0),
    )
    spec = ActivationSpec(TENANT, HOOKS, HOOKS_FIXTURE, load_manifest(HOOKS_FIXTURE))
    await supervisor.activate(spec)
    try:
        for _ in range(200):
            if supervisor.circuit_openings:
                break
            await asyncio.sleep(0.01)
        assert supervisor.circuit_openings == {(HOOKS, "crash_loop"): 1}
        assert supervisor.restarts == {(HOOKS, "start_failed"): 1}
        (status,) = supervisor.statuses()
        assert status.slots[0].state is WorkerState.CIRCUIT_OPEN
    finally:
        await supervisor.close()
    assert supervisor.circuit_openings == {(HOOKS, "crash_loop"): 1}  # they outlive the slots
