"""Category dispatch over real sandboxed workers: order, rules and tenant scope."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol import load_manifest
from protocol.categories.audit_sink import AuditEvent
from protocol.categories.input_validator import ValidationInput
from runner.dispatch import Dispatcher, NoProviderError
from runner.launcher import WorkerLauncher
from runner.supervisor import GLOBAL, ActivationSpec, Supervisor
from runner.worker import PluginWorker

from .conftest import FIXTURES

pytestmark = pytest.mark.integration


def spec(name: str, tenant: str) -> ActivationSpec:
    bundle = (FIXTURES / name).resolve()
    manifest = load_manifest(bundle)
    return ActivationSpec(tenant, manifest.id, Path(bundle), manifest)


@pytest.fixture
async def supervisor(launcher: WorkerLauncher) -> AsyncIterator[Supervisor]:
    async def start(s: ActivationSpec) -> PluginWorker:
        return await launcher.start(
            plugin_id=s.plugin_id,
            tenant_id=s.tenant_id,
            bundle_dir=s.bundle_dir,
            config=s.config,
            config_digest=s.config_digest,
        )

    sup = Supervisor(start)
    try:
        yield sup
    finally:
        await sup.close()


async def test_slots_run_by_priority_and_all_must_pass_stops_at_a_rejection(
    supervisor: Supervisor,
) -> None:
    # echo (input_validator priority 100) is activated first, gatekeeper (priority 10) second.
    assert await supervisor.activate(spec("echo", "t1"), wait_s=10)
    assert await supervisor.activate(spec("gatekeeper", "t1"), wait_s=10)
    dispatcher = Dispatcher(supervisor)
    ok = await dispatcher.dispatch(
        "t1", "input_validator", "validate", ValidationInput(field="f", value="v")
    )
    assert ok.passed
    assert [o.key.plugin_id for o in ok.outcomes] == [
        "dev.corral.test.gatekeeper",
        "dev.corral.test.echo",
    ]
    refused = await dispatcher.dispatch(
        "t1", "input_validator", "validate", ValidationInput(field="f", value="forbidden")
    )
    assert not refused.passed and refused.result.errors == ["gatekeeper: forbidden"]
    assert len(refused.outcomes) == 1  # echo was never asked


async def test_ties_keep_activation_order_and_global_slots_join_the_tenants(
    supervisor: Supervisor,
) -> None:
    assert await supervisor.activate(spec("gatekeeper", GLOBAL), wait_s=10)
    assert await supervisor.activate(spec("gatekeeper", "t1"), wait_s=10)
    dispatcher = Dispatcher(supervisor)
    event = AuditEvent(time="2026-01-01T00:00:00Z", action="test", outcome="ok")
    fanned = await dispatcher.dispatch("t1", "audit_sink", "record", event)
    assert fanned.passed and [o.key.tenant_id for o in fanned.outcomes] == [GLOBAL, "t1"]
    other = await dispatcher.dispatch("t2", "audit_sink", "record", event)
    assert [o.key.tenant_id for o in other.outcomes] == [GLOBAL]  # never t1's slot


async def test_a_tenant_without_providers_gets_no_provider_error(supervisor: Supervisor) -> None:
    assert await supervisor.activate(spec("gatekeeper", "t1"), wait_s=10)
    with pytest.raises(NoProviderError):
        await Dispatcher(supervisor).dispatch(
            "t2", "input_validator", "validate", ValidationInput(field="f", value="v")
        )
