"""`Service.reload` (SIGHUP) over real sandboxed workers: trust files, registry, config document."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from runner.control import Workers
from runner.supervisor import ActivationKey
from tests.fixtures.install.builders import checksum_of
from tests.runner.api_harness import DEMO, HOOKS, REPO, TWILIO, Api, running_api

pytestmark = pytest.mark.integration

TOKEN = "tok-reload-secret"
SETTINGS = {"account_sid": "AC" + "2" * 32, "auth_token": TOKEN, "from_number": "+15550100"}
_TWILIO_RULE = re.compile(r'\[\[plugin\]\]\nid = "dev\.corral\.twilio-sms"\n[^\[]*')


@pytest.fixture
def state() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="corral-reload-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def service_with(state: Path, *tenants: str) -> AsyncIterator[Api]:
    """A service with its own registry copy, and Twilio enabled for each tenant."""
    registry = state / "registry.json"
    shutil.copyfile(REPO / "registry.json", registry)
    async with running_api(state, environ={"CORRAL_PLUGIN_REGISTRY": str(registry)}) as api:
        for tenant in tenants:
            put = await api.call(
                "PUT",
                f"/plugins/{TWILIO}/config?tenant_id={tenant}",
                json_body={"enabled": True, "settings": SETTINGS},
            )
            assert put.status == 200 and put.body["workers"] == "started"
        yield api


def pids(api: Api, tenant: str) -> list[int | None]:
    return [
        slot.pid
        for status in api.service.host.supervisor.statuses()
        if (status.tenant_id, status.plugin_id) == (tenant, TWILIO)
        for slot in status.slots
    ]


def edit_config(api: Api, change: Any) -> None:
    path = api.service.store.path
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def running_children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


async def gone(pids: list[int | None]) -> bool:
    """Wait (bounded) until none of `pids` runs: a switched-out worker drains in the background."""
    async with asyncio.timeout(30):
        while set(pids) & running_children():
            await asyncio.sleep(0.05)
    return True


async def test_a_hand_edited_setting_switches_only_that_tenants_workers(state: Path) -> None:
    async with service_with(state, "tenant-a", "tenant-b") as api:
        before_a, before_b = pids(api, "tenant-a"), pids(api, "tenant-b")

        def change(doc: dict[str, Any]) -> None:
            doc["tenants"]["tenant-a"]["settings"]["plugins"][TWILIO]["from_number"] = "+15550199"

        edit_config(api, change)
        report = await api.service.reload()

        assert report.ok, report.problems
        assert report.config == "reread" and report.trust == "reread"
        assert report.workers_of("tenant-a", TWILIO) is Workers.SWITCHED
        assert len(report.activations) == 1
        after_a = pids(api, "tenant-a")
        assert None not in after_a and set(after_a).isdisjoint(before_a)
        assert await gone(before_a)  # the old workers drained and exited
        assert pids(api, "tenant-b") == before_b
        spec = api.service.host.supervisor.spec_of(ActivationKey("tenant-a", TWILIO))
        assert spec is not None and spec.config["from_number"] == "+15550199"
        assert spec.config["auth_token"] == TOKEN  # the encrypted secret came through
        audit = api.service.audit.settings.path.read_text()
        assert '"host.reload"' in audit and TOKEN not in audit


async def test_a_reload_with_nothing_changed_touches_nothing(state: Path) -> None:
    async with service_with(state, "tenant-a") as api:
        before = pids(api, "tenant-a")
        report = await api.service.reload()
        assert report.ok and report.activations == () and report.loaded == ()
        assert report.unloaded == () and report.registry == "unchanged"
        assert pids(api, "tenant-a") == before


async def test_an_invalid_config_file_is_reported_and_the_old_settings_keep_serving(
    state: Path,
) -> None:
    async with service_with(state, "tenant-a") as api:
        before = pids(api, "tenant-a")
        torn = '{"version": 1, "tenants": {"tenant-a": '
        api.service.store.path.write_text(torn)
        report = await api.service.reload()

        assert report.config == "kept" and not report.ok
        assert any("config document kept" in p and "not JSON" in p for p in report.problems)
        assert pids(api, "tenant-a") == before
        answer = await api.call("GET", f"/plugins/{TWILIO}/config?tenant_id=tenant-a")
        assert answer.body["settings"]["from_number"] == "+15550100"
        assert api.service.store.path.read_text() == torn  # not repaired behind the operator
        audit = api.service.audit.settings.path.read_text().splitlines()
        event = json.loads(next(line for line in audit if '"host.reload"' in line))
        assert event["outcome"] == "failure" and event["details"]["config"] == "kept"


async def test_settings_the_schema_refuses_are_reported_and_not_applied(state: Path) -> None:
    async with service_with(state, "tenant-a") as api:
        before = pids(api, "tenant-a")

        def change(doc: dict[str, Any]) -> None:
            doc["tenants"]["tenant-a"]["settings"]["plugins"][TWILIO]["from_number"] = 5

        edit_config(api, change)
        report = await api.service.reload()

        assert report.config == "reread" and report.activations == ()
        assert any("$.from_number" in p and "schema" in p for p in report.problems)
        assert pids(api, "tenant-a") == before
        spec = api.service.host.supervisor.spec_of(ActivationKey("tenant-a", TWILIO))
        assert spec is not None and spec.config["from_number"] == "+15550100"


async def test_a_plugin_removed_from_the_allowlist_stops_and_comes_back(state: Path) -> None:
    async with service_with(state, "tenant-a") as api:
        allowlist = state / "allowlist.toml"
        trusted = allowlist.read_text()
        without, removed = _TWILIO_RULE.subn("", trusted)
        assert removed == 1
        before = pids(api, "tenant-a")
        allowlist.write_text(without)

        report = await api.service.reload()

        assert report.ok, report.problems
        assert report.unloaded == (TWILIO,)
        assert report.workers_of("tenant-a", TWILIO) is Workers.STOPPED
        assert api.service.host.supervisor.spec_of(ActivationKey("tenant-a", TWILIO)) is None
        assert not set(before) & running_children()
        ready = await api.call("GET", "/readyz", key=None)
        assert f"refused: {TWILIO}" in json.dumps(ready.body)
        snapshot = await api.service.store.load()  # the activation stays recorded
        activation = snapshot.document.tenants["tenant-a"].activation(TWILIO)
        assert activation is not None and activation.enabled

        allowlist.write_text(trusted)
        report = await api.service.reload()

        assert report.ok, report.problems
        assert report.loaded == (TWILIO,)
        assert report.workers_of("tenant-a", TWILIO) is Workers.STARTED
        assert None not in pids(api, "tenant-a")
        ready = await api.call("GET", "/readyz", key=None)
        assert "refused" not in json.dumps(ready.body)


async def install_two_versions(api: Api, bundle: Path, plugin_id: str) -> Path:
    """Install `bundle` (1.0.0) and a 1.1.0 copy of it (approved by a reload), in that order."""
    newer = api.state / "bundles" / f"{bundle.name}-1.1"
    shutil.copytree(bundle, newer)
    manifest = newer / "plugin.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.1.0"'))
    with (api.state / "checksums.txt").open("a") as checksums:
        checksums.write(f"{checksum_of(newer)}  {newer}\n")
    assert (await api.service.reload()).ok  # checksums.txt now approves 1.1.0
    for path in (bundle, newer):
        answer = await api.call("POST", "/api/v1/admin/plugins", json_body={"path": str(path)})
        assert answer.status == 201 and answer.body["id"] == plugin_id, answer.text
    return newer


def admit_only_1_0(api: Api, plugin_id: str) -> None:
    allowlist = api.state / "allowlist.toml"
    rule = f'id = "{plugin_id}"\nversions = ">=1.0.0"'
    text = allowlist.read_text()
    assert rule in text
    allowlist.write_text(text.replace(rule, rule[:-1] + ',<1.1.0"'))


def running_version(api: Api, plugin_id: str) -> str | None:
    spec = api.service.host.supervisor.spec_of(ActivationKey("global", plugin_id))
    return spec.manifest.version if spec is not None else None


async def test_a_version_the_allowlist_no_longer_admits_switches_back(state: Path) -> None:
    async with service_with(state) as api:
        await install_two_versions(api, api.hooks_dir, HOOKS)
        body = {"enabled": True, "settings": {"secret": "hooks-reload-secret"}}
        put = await api.call("PUT", f"/plugins/{HOOKS}/config?tenant_id=global", json_body=body)
        assert put.status == 200 and put.body["workers"] == "started"
        assert running_version(api, HOOKS) == "1.1.0"
        admit_only_1_0(api, HOOKS)

        report = await api.service.reload()

        assert report.ok, report.problems
        assert report.loaded == (HOOKS,) and report.unloaded == ()
        assert report.workers_of("global", HOOKS) is Workers.SWITCHED
        assert running_version(api, HOOKS) == "1.0.0"
        assert api.service.host.plugins[HOOKS].version == "1.0.0"


async def test_workers_of_a_revoked_bundle_stop_when_the_replacement_cannot_start(
    state: Path,
) -> None:
    async with service_with(state) as api:
        await install_two_versions(api, api.demo_dir, DEMO)  # its worker never starts
        api.service.control.start_wait_s = 0.0  # so activating does not wait for it
        on = await api.call("POST", f"/api/v1/admin/plugins/{DEMO}/activate", json_body={})
        assert on.status == 200 and running_version(api, DEMO) == "1.1.0"
        admit_only_1_0(api, DEMO)

        report = await api.service.reload()

        assert report.loaded == (DEMO,)
        assert report.workers_of("global", DEMO) is Workers.STOPPED
        assert any("no longer verifies" in p for p in report.problems)
        assert running_version(api, DEMO) is None


@pytest.mark.parametrize("name", ["allowlist.toml", "checksums.txt"])
async def test_an_unparseable_trust_file_keeps_everything(state: Path, name: str) -> None:
    async with service_with(state, "tenant-a") as api:
        before = pids(api, "tenant-a")
        loaded = dict(api.service.host.plugins)
        (state / name).write_text("[[plugin\nnot = valid\n")

        report = await api.service.reload()

        assert report.trust == "kept" and report.loaded == report.unloaded == ()
        assert any(p.startswith("plugins unchanged") and name in p for p in report.problems)
        assert api.service.host.plugins == loaded
        assert pids(api, "tenant-a") == before


async def test_a_registry_edit_shows_up_and_an_invalid_one_keeps_the_old(state: Path) -> None:
    async with service_with(state) as api:
        path = state / "registry.json"
        registry = json.loads(path.read_text())
        first = {**registry["providers"][0], "name": "Renamed on reload"}
        path.write_text(json.dumps({"providers": [first]}))

        report = await api.service.reload()

        assert report.ok and report.registry == "replaced"
        listed = (await api.call("GET", "/plugin-registry")).body["providers"]
        assert [p["name"] for p in listed] == ["Renamed on reload"]

        path.write_text('{"providers": [')
        report = await api.service.reload()

        assert report.registry == "kept" and "not JSON" in report.registry_reason
        listed = (await api.call("GET", "/plugin-registry")).body["providers"]
        assert [p["name"] for p in listed] == ["Renamed on reload"]


async def test_a_reload_waits_for_an_api_write_in_flight(state: Path) -> None:
    async with service_with(state) as api:
        path = state / "registry.json"
        registry = json.loads(path.read_text())
        path.write_text(json.dumps({"providers": registry["providers"][:1]}))
        gate = api.service.control.writes
        async with gate.shared():  # as a PUT holds it
            reload = asyncio.create_task(api.service.reload())
            for _ in range(1000):
                if gate.is_closed:
                    break
                await asyncio.sleep(0)
            assert gate.is_closed and not reload.done()
            assert len(api.service.registry.providers) == len(registry["providers"])
        report = await reload
        assert report.registry == "replaced"
        assert len(api.service.registry.providers) == 1
