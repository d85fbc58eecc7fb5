"""Egress end to end: sandboxed workers reach a provider stub on 127.0.0.1 through the host's
broker, and only the hosts their manifest names; with two tenants and their own secrets.

The stub stands in for api.twilio.com through `CORRAL_EGRESS_HOST_OVERRIDES` (a test-only
setting) plus 127.0.0.0/8 as an allowed private network, as docs/egress.md describes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from protocol.categories.notification_channel import NotificationReceipt, SendNotification
from runner.supervisor import ActivationKey
from tests.runner.api_harness import TWILIO, Api, running_api

pytestmark = pytest.mark.integration

TOKENS = {"tenant-a": "token-a-" + "1" * 24, "tenant-b": "token-b-" + "2" * 24}


@pytest.fixture
async def stub() -> AsyncIterator[tuple[TestServer, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def messages(request: web.Request) -> web.Response:
        form = dict((await request.post()).items())
        seen.append(
            {"auth": request.headers.get("Authorization"), "form": form, "host": request.host}
        )
        return web.json_response({"sid": "SM" + "f" * 32, "status": "queued"}, status=201)

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", messages)
    app.router.add_get("/ping", ping)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, seen
    finally:
        await server.close()


async def test_two_tenants_send_through_egress_with_their_own_secrets(
    stub: tuple[TestServer, list[dict[str, Any]]],
) -> None:
    server, seen = stub
    origin = f"http://127.0.0.1:{server.port}"
    environ = {
        "CORRAL_EGRESS_HOST_OVERRIDES": f"api.twilio.com={origin},allowed.example={origin}",
        "CORRAL_EGRESS_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
    }
    async with running_api(environ=environ) as api:
        for tenant, token in TOKENS.items():
            settings = {
                "account_sid": "AC" + "0" * 32,
                "auth_token": token,
                "from_number": "+15550001111",
            }
            answer = await api.call(
                "PUT",
                f"/plugins/{TWILIO}/config?tenant_id={tenant}",
                json_body={"enabled": True, "settings": settings},
            )
            assert answer.status == 200, answer.text
        message = SendNotification(recipient="+15550002222", body="hello")
        for tenant in TOKENS:
            receipt = await api.service.host.supervisor.call(
                ActivationKey(tenant, TWILIO),
                "notification_channel.send",
                message,
                timeout_s=15,
                result_type=NotificationReceipt,
            )
            assert receipt.status == "queued"
        sent = [base64.b64decode(s["auth"].split()[1]).decode().split(":")[1] for s in seen]
        assert sent == list(TOKENS.values())  # each tenant's worker used its own secret
        assert all(s["host"] == "api.twilio.com" for s in seen)  # the Host header is the real one
        await _egress_policy_is_enforced(api)
        audit = api.service.audit.settings.path.read_text()
        events = [json.loads(line) for line in audit.splitlines()]
        egress = [e for e in events if e["action"] == "egress.request"]
        assert {e["outcome"] for e in egress} >= {"success", "denied"}
        assert "hello" not in audit and TOKENS["tenant-a"] not in audit


async def _egress_policy_is_enforced(api: Api) -> None:
    installed = await api.call(
        "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
    )
    assert installed.status == 201
    await api.call(
        "PUT",
        "/plugins/dev.corral.test.hooks/config?tenant_id=tenant-a",
        json_body={"enabled": True, "settings": {"secret": "s"}},
    )

    async def fetch(url: str) -> Any:
        answer = await api.call(
            "POST",
            "/webhook/hooks/tenant-a/fetch",
            key=None,
            data=url.encode(),
            check_documented=False,
        )
        assert answer.status == 200, answer.text
        return answer.body

    assert await fetch("https://allowed.example/ping") == {"status": 200, "body": "pong"}
    for url, reason in (
        ("https://api.twilio.com/ping", "host_not_permitted"),  # another plugin's grant
        ("https://evil.example/", "host_not_permitted"),
        ("http://allowed.example/ping", "scheme_not_allowed"),
        ("https://127.0.0.1/", "host_not_permitted"),
    ):
        outcome = await fetch(url)
        assert outcome["error"] == "egress_denied" and outcome["data"]["reason"] == reason, url
