"""A plugin that logs its own secret config value does not put it in the host's log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.runner.api_harness import HOOKS, running_api

pytestmark = pytest.mark.integration

SECRET = "hook-secret-that-must-not-leak"


async def test_secret_config_values_are_masked_in_relayed_worker_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runner.worker")
    async with running_api() as api:
        installed = await api.call(
            "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
        )
        assert installed.status == 201, installed.text
        answer = await api.call(
            "PUT",
            f"/plugins/{HOOKS}/config?tenant_id=t1",
            json_body={"enabled": True, "settings": {"secret": SECRET}},
        )
        assert answer.status == 200, answer.text
        hook = await api.call(
            "POST",
            "/webhook/hooks/t1/open",
            key=None,
            data=b"log-secret",
            check_documented=False,
        )
        assert hook.status == 200, hook.text
        async with asyncio.timeout(10):  # the relay reads stderr on its own schedule
            while not any("calling with secret" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
    relayed = [r.getMessage() for r in caplog.records if "calling with secret" in r.getMessage()]
    assert relayed and all("calling with secret ***" in m for m in relayed), relayed
    assert not any(SECRET in r.getMessage() for r in caplog.records)
