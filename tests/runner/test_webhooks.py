"""Inbound webhooks end to end: real service, real workers, signatures computed here by hand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
import pytest_asyncio

from runner.supervisor import ActivationKey
from tests.runner.api_harness import HOOKS, TWILIO, Answer, Api, running_api

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

A, B = "tenant-a", "tenant-b"
TOKENS = {A: "token-of-a-" + "1" * 20, B: "token-of-b-" + "2" * 20}
HOOK_SECRETS = {A: "hook-secret-a", B: "hook-secret-b"}
STATUS_FORM = {
    "MessageSid": "SM" + "a" * 32,
    "MessageStatus": "delivered",
    "To": "+15550002222",
    "From": "+15550001111",
    "AccountSid": "AC" + "0" * 32,
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api() -> AsyncIterator[Api]:
    async with running_api() as api:
        installed = await api.call(
            "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
        )
        assert installed.status == 201, installed.text
        for tenant in (A, B):
            twilio = {
                "account_sid": "AC" + "0" * 32,
                "auth_token": TOKENS[tenant],
                "from_number": "+15550001111",
            }
            for plugin_id, settings in (
                (TWILIO, twilio),
                (HOOKS, {"secret": HOOK_SECRETS[tenant]}),
            ):
                answer = await api.call(
                    "PUT",
                    f"/plugins/{plugin_id}/config?tenant_id={tenant}",
                    json_body={"enabled": True, "settings": settings},
                )
                assert answer.status == 200, answer.text
        yield api


def twilio_signature(token: str, url: str, form: dict[str, str]) -> str:
    """Twilio's scheme, written out here independently of core's."""
    signed = url + "".join(k + form[k] for k in sorted(form))
    return base64.b64encode(
        hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()


def hook_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post_signed(api: Api, tenant: str, body: bytes) -> Answer:
    """POST `body` to the hooks fixture's signed route, signed with the tenant's secret."""
    return await api.call(
        "POST",
        f"/webhook/hooks/{tenant}/signed",
        key=None,
        data=body,
        headers={"X-Signature": hook_signature(HOOK_SECRETS[tenant], body)},
        check_documented=False,
    )


def calls(api: Api, tenant: str, plugin_id: str) -> int:
    for status in api.service.host.supervisor.statuses():
        if (status.tenant_id, status.plugin_id) == (tenant, plugin_id):
            return sum(slot.calls for slot in status.slots)
    raise AssertionError(f"{plugin_id} is not active for {tenant}")


async def post_status(api: Api, tenant: str, token: str) -> int:
    path = f"/webhook/twilio/{tenant}/sms-status"
    url = str(api.client.make_url(path))
    body = urlencode(STATUS_FORM)
    answer = await api.call(
        "POST",
        path,
        key=None,
        data=body.encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(token, url, STATUS_FORM),
        },
        check_documented=False,
    )
    return answer.status


async def test_a_twilio_callback_reaches_only_its_tenants_worker(api: Api) -> None:
    before_a, before_b = calls(api, A, TWILIO), calls(api, B, TWILIO)
    assert await post_status(api, A, TOKENS[A]) == 204
    assert calls(api, A, TWILIO) == before_a + 1
    assert calls(api, B, TWILIO) == before_b


async def test_another_tenants_signature_is_401_audited_and_forwards_nothing(api: Api) -> None:
    before_a = calls(api, A, TWILIO)
    assert await post_status(api, A, TOKENS[B]) == 401
    assert calls(api, A, TWILIO) == before_a
    audit = api.service.audit.settings.path.read_text().splitlines()
    refusal = json.loads(audit[-1])
    assert refusal["action"] == "webhook.verify" and refusal["outcome"] == "denied"
    assert refusal["tenant"] == A and refusal["details"]["reason"] == "bad_signature"
    assert TOKENS[B] not in "\n".join(audit)


async def test_unknown_slug_tenant_or_route_all_look_the_same(api: Api) -> None:
    answers = [
        await api.call("POST", path, key=None, data=b"x", check_documented=False)
        for path in (
            "/webhook/nope/tenant-a/sms-status",
            "/webhook/twilio/tenant-nobody/sms-status",
            "/webhook/twilio/tenant-a/other",
            "/webhook/twilio/tenant-a/sms-statusX",
            f"/webhook/{TWILIO}/tenant-nobody/sms-status",
        )
    ]
    assert {(a.status, a.body["error"], a.body["message"]) for a in answers} == {
        (404, "not_found", "no such webhook")
    }


async def test_the_full_id_works_as_slug_and_prefix_paths_match(api: Api) -> None:
    body = b"hello"
    signature = hook_signature(HOOK_SECRETS[B], body)
    answer = await api.call(
        "POST",
        f"/webhook/{HOOKS}/{B}/signed/extra/part?a=1&a=2",
        key=None,
        data=body,
        headers={"X-Signature": signature, "Cookie": "x=y", "X-API-Key": "nope"},
        check_documented=False,
    )
    assert answer.status == 200, answer.text
    echo = answer.body
    assert echo["tenant"] == B and echo["route"] == "signed" and echo["verified"] is True
    assert echo["path"] == "/signed/extra/part" and echo["query"] == [["a", "1"], ["a", "2"]]
    assert "cookie" not in echo["headers"] and "x-api-key" not in echo["headers"]
    assert "Set-Cookie" not in answer.headers and answer.headers["X-Hook"] == "yes"
    assert answer.headers["X-Request-ID"]


async def test_methods_are_checked_with_allow(api: Api) -> None:
    answer = await api.call("GET", f"/webhook/hooks/{A}/signed", key=None, check_documented=False)
    assert answer.status == 405 and answer.headers["Allow"] == "POST"
    plugin_checked = await api.call(
        "GET", f"/webhook/hooks/{A}/open", key=None, check_documented=False
    )
    assert plugin_checked.status == 200 and plugin_checked.body["verified"] is False


async def test_an_oversized_body_is_413_before_the_worker_sees_it(api: Api) -> None:
    before = calls(api, A, HOOKS)
    big = b"x" * 2048
    declared = await post_signed(api, A, big)
    assert (declared.status, declared.body["error"]) == (413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    streamed = await api.call(
        "POST", f"/webhook/hooks/{A}/open", key=None, data=chunks(), check_documented=False
    )
    assert streamed.status == 413
    assert calls(api, A, HOOKS) == before


async def test_a_slow_handler_is_504_and_cancelled(api: Api) -> None:
    body = b"slow"
    answer = await post_signed(api, A, body)
    assert (answer.status, answer.body["error"]) == (504, "gateway_timeout")
    for _ in range(50):  # the worker received $/cancel: nothing stays in flight
        status = next(
            s
            for s in api.service.host.supervisor.statuses()
            if (s.tenant_id, s.plugin_id) == (A, HOOKS)
        )
        if status.slots[0].inflight == 0:
            break
        await asyncio.sleep(0.1)
    assert status.slots[0].inflight == 0


async def test_a_worker_dying_mid_request_is_502_and_it_comes_back(api: Api) -> None:
    body = b"crash"
    answer = await post_signed(api, B, body)
    assert (answer.status, answer.body["error"]) == (502, "bad_gateway")
    ok = b"after"
    for _ in range(100):
        again = await post_signed(api, B, ok)
        if again.status == 200:
            break
        assert again.status == 503 and again.headers["Retry-After"]
        await asyncio.sleep(0.1)
    assert again.status == 200


async def test_webhook_rate_limit_per_route_and_tenant() -> None:
    async with running_api(environ={"CORRAL_WEBHOOK_RATE_PER_MINUTE": "2"}) as api:
        statuses = [
            (
                await api.call(
                    "POST",
                    "/webhook/twilio/x/sms-status",
                    key=None,
                    data=b"",
                    check_documented=False,
                )
            ).status
            for _ in range(2)
        ]
        assert statuses == [404, 404]  # unknown targets spend nothing and reveal nothing
        await api.call(
            "PUT",
            f"/plugins/{TWILIO}/config?tenant_id=t",
            json_body={
                "enabled": True,
                "settings": {
                    "account_sid": "AC" + "0" * 32,
                    "auth_token": "t" * 20,
                    "from_number": "+1555",
                },
            },
        )
        answers = [await post_status(api, "t", "wrong") for _ in range(3)]
        assert answers == [401, 401, 429]
        assert api.service.host.supervisor.spec_of(ActivationKey("t", TWILIO)) is not None
