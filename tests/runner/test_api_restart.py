"""What survives a restart of the service: activations, settings, keys; and a damaged document."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.config_errors import ConfigUnrecoverableError
from runner.supervisor import ActivationKey
from tests.runner.api_harness import TWILIO, running_api

pytestmark = pytest.mark.integration

SETTINGS = {"account_sid": "AC" + "1" * 32, "auth_token": "tok-restart", "from_number": "+15550001"}


@pytest.fixture
def state() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="corral-restart-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_activations_settings_and_keys_come_back_after_a_restart(state: Path) -> None:
    async with running_api(state) as api:
        put = await api.call(
            "PUT",
            f"/plugins/{TWILIO}/config?tenant_id=tenant-r",
            json_body={"enabled": True, "settings": SETTINGS},
        )
        assert put.status == 200
        created = await api.call(
            "POST",
            "/api/v1/admin/keys",
            json_body={"name": "kept", "scopes": ["admin:plugins:read"], "tenant_id": "tenant-r"},
        )
        key = created.body["key"]
    async with running_api(state) as api:
        assert api.service.restored == 1
        assert api.service.host.supervisor.spec_of(ActivationKey("tenant-r", TWILIO)) is not None
        answer = await api.call("GET", f"/plugins/{TWILIO}/config", key=key)
        assert answer.body["enabled"] is True and answer.body["settings"]["auth_token"] == "***"
        ready = await api.call("GET", "/readyz", key=None)
        assert "1 restored" in json.dumps(ready.body)


async def test_a_corrupt_document_rolls_back_to_the_last_backup_loudly(state: Path) -> None:
    async with running_api(state) as api:
        for number in ("+15550002", "+15550003"):
            settings = {**SETTINGS, "from_number": number}
            body = {"enabled": False, "settings": settings}
            await api.call("PUT", f"/plugins/{TWILIO}/config?tenant_id=t", json_body=body)
        path = api.service.store.path
    path.write_text('{"version": 1, "tenants": {"t": ')  # torn
    async with running_api(state) as api:
        assert api.service.store.rollback is not None
        stored = await api.service.store.plugin_config("t", TWILIO)
        assert stored["from_number"] == "+15550002"  # the newest valid backup
        audit = api.service.audit.settings.path.read_text()
        assert '"config.rollback"' in audit


async def test_no_valid_document_refuses_to_start(state: Path) -> None:
    async with running_api(state) as api:
        path = api.service.store.path
    for damaged in [path, *path.parent.glob(path.name + ".bak*")]:
        damaged.write_text("not json")
    with pytest.raises(ConfigUnrecoverableError):
        async with running_api(state):
            pass
