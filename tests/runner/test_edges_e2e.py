"""Issue 6's scenario in one test: both network edges of a plugin, end to end.

A real service (sandboxed workers, the admin API, the egress broker) runs the shipped Phaxio fax
plugin for two tenants with different secrets, plus the hooks fixture for what a well-behaved
provider plugin cannot show (fetching an arbitrary URL, hanging). A Phaxio stub on 127.0.0.1
stands in for api.phaxio.com through the operator's test-only egress settings.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from protocol.categories.outbound_fax import FaxJob, SendFax
from tests.plugins.fakes import basic_auth
from tests.runner.api_harness import HOOKS, PHAXIO, Answer, Api, running_api
from tests.runner.phaxio_stub import (
    PhaxioStub,
    callback_body,
    calls,
    fax_resource,
    phaxio_signature,
    running_phaxio_stub,
)

pytestmark = pytest.mark.integration

A, B = "tenant-a", "tenant-b"
PHAXIO_SETTINGS = {
    tenant: {
        "api_key": f"key-of-{tenant}",
        "api_secret": f"secret-of-{tenant}-" + "9" * 16,
        "callback_token": f"callback-token-of-{tenant}-" + "7" * 16,
        "caller_id": "+15550001111",
    }
    for tenant in (A, B)
}
HOOKS_SECRET = "hooks-secret-of-a-" + "5" * 16
PHAXIO_MAX_BODY_BYTES = 262144  # the fax-status route's max_body_bytes (plugins/phaxio_fax)


async def test_webhooks_and_egress_end_to_end_for_two_tenants() -> None:
    async with running_phaxio_stub() as stub, running_api(environ=stub.egress_environ()) as api:
        await activate_phaxio_for_both_tenants(api)
        fax_id = await a_send_reaches_the_stub_with_the_tenants_credentials(api, stub)
        await a_callback_signed_by_a_reaches_only_as_worker(api, fax_id)
        await bs_signature_on_as_route_is_refused(api, fax_id)
        await a_disallowed_domain_is_egress_denied(api)
        await an_oversized_callback_is_413(api)
        await a_slow_callback_is_504(api)


async def activate_phaxio_for_both_tenants(api: Api) -> None:
    for tenant, settings in PHAXIO_SETTINGS.items():
        answer = await api.call(
            "PUT",
            f"/plugins/{PHAXIO}/config?tenant_id={tenant}",
            json_body={"enabled": True, "settings": settings},
        )
        assert answer.status == 200, answer.text
        assert answer.body["settings"]["callback_token"] == "***"  # secrets never come back


async def a_send_reaches_the_stub_with_the_tenants_credentials(api: Api, stub: PhaxioStub) -> str:
    fax = SendFax(to="+15551234567", document=b"%PDF-1.4\nhello\n%%EOF\n")
    result = await api.service.host.dispatcher.dispatch(A, "outbound_fax", "send_fax", fax)
    (received,) = stub.received
    assert (received.method, received.path, received.host) == (
        "POST",
        "/v2.1/faxes",
        "api.phaxio.com",
    )
    settings = PHAXIO_SETTINGS[A]
    assert received.authorization == basic_auth(settings["api_key"], settings["api_secret"])
    assert received.fields["to"] == fax.to and received.files["file"].data == fax.document
    assert result.result == FaxJob(job_id=str(stub.fax_ids[0]), status="queued")
    return result.result.job_id


async def post_status(api: Api, route_tenant: str, signer: str, body: bytes) -> Answer:
    """POST a fax status callback to `route_tenant`'s route, signed with `signer`'s token."""
    token = PHAXIO_SETTINGS[signer]["callback_token"]
    return await api.call(
        "POST",
        f"/webhook/phaxio/{route_tenant}/fax-status",
        key=None,
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Phaxio-Signature": phaxio_signature(token, body),
        },
        check_documented=False,
    )


async def a_callback_signed_by_a_reaches_only_as_worker(api: Api, fax_id: str) -> None:
    body = callback_body(fax_resource(int(fax_id), "success"))
    before = calls(api, A, PHAXIO), calls(api, B, PHAXIO)
    answer = await post_status(api, A, A, body)
    assert answer.status == 200, answer.text
    # The plugin's own answer, and the tenant in it is the one its worker was started for.
    assert answer.body == {"fax_id": fax_id, "status": "success", "tenant": A}
    assert (calls(api, A, PHAXIO), calls(api, B, PHAXIO)) == (before[0] + 1, before[1])


async def bs_signature_on_as_route_is_refused(api: Api, fax_id: str) -> None:
    body = callback_body(fax_resource(int(fax_id), "failure"))
    before = calls(api, A, PHAXIO), calls(api, B, PHAXIO)
    answer = await post_status(api, A, B, body)
    assert (answer.status, answer.body["error"]) == (401, "invalid_signature")
    assert (calls(api, A, PHAXIO), calls(api, B, PHAXIO)) == before
    last = json.loads(api.service.audit.settings.path.read_text().splitlines()[-1])
    assert (last["action"], last["outcome"], last["tenant"]) == ("webhook.verify", "denied", A)
    assert last["details"]["reason"] == "bad_signature"
    # B's signature is good on B's own route: the refusal was about whose secret, not the body.
    assert (await post_status(api, B, B, body)).body["tenant"] == B


async def a_disallowed_domain_is_egress_denied(api: Api) -> None:
    installed = await api.call(
        "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
    )
    assert installed.status == 201, installed.text
    answer = await api.call(
        "PUT",
        f"/plugins/{HOOKS}/config?tenant_id={A}",
        json_body={"enabled": True, "settings": {"secret": HOOKS_SECRET}},
    )
    assert answer.status == 200, answer.text
    # The fixture asks the host for the URL it is given and answers with what the host said.
    for url in ("https://evil.example/exfiltrate", "https://api.phaxio.com/v2.1/faxes"):
        fetched = await api.call(
            "POST", f"/webhook/hooks/{A}/fetch", key=None, data=url.encode(), check_documented=False
        )
        assert fetched.status == 200, fetched.text
        assert fetched.body == {"error": "egress_denied", "data": {"reason": "host_not_permitted"}}


async def an_oversized_callback_is_413(api: Api) -> None:
    body = b"x" * (PHAXIO_MAX_BODY_BYTES + 1)
    before = calls(api, A, PHAXIO)
    answer = await api.call(
        "POST",
        f"/webhook/phaxio/{A}/fax-status",
        key=None,
        data=io.BytesIO(body),
        headers={
            "X-Phaxio-Signature": phaxio_signature(PHAXIO_SETTINGS[A]["callback_token"], body)
        },
        check_documented=False,
    )
    assert (answer.status, answer.body["error"]) == (413, "payload_too_large")
    assert calls(api, A, PHAXIO) == before


async def a_slow_callback_is_504(api: Api) -> None:
    body = b"slow"  # the fixture sleeps far past its route's 1 s timeout_seconds
    answer = await api.call(
        "POST",
        f"/webhook/hooks/{A}/signed",
        key=None,
        data=body,
        headers={"X-Signature": phaxio_signature(HOOKS_SECRET, body)},
        check_documented=False,
    )
    assert (answer.status, answer.body["error"]) == (504, "gateway_timeout")
    for _ in range(50):  # the worker got $/cancel: the call does not stay in flight
        if inflight(api, A, HOOKS) == 0:
            break
        await asyncio.sleep(0.1)
    assert inflight(api, A, HOOKS) == 0


def inflight(api: Api, tenant: str, plugin_id: str) -> int:
    return sum(
        slot.inflight
        for status in api.service.host.supervisor.statuses()
        if (status.tenant_id, status.plugin_id) == (tenant, plugin_id)
        for slot in status.slots
    )
