"""The shipped Phaxio fax plugin end to end: a real service, sandboxed workers for two tenants,
send_fax and get_status through the egress broker to a Phaxio stub on 127.0.0.1, and status
callbacks verified in core with HMAC-SHA256 over the body (the issue's scheme; real Phaxio signs
differently, see docs/webhooks.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from protocol import ErrorCode, RemoteError
from protocol.categories.outbound_fax import FaxJob, FaxQuery, SendFax
from runner.supervisor import ActivationKey
from tests.plugins.fakes import basic_auth
from tests.runner.api_harness import PHAXIO, Answer, Api, running_api
from tests.runner.phaxio_stub import (
    FAILED_FAX_ID,
    INVALID_NUMBER,
    UNKNOWN_FAX_ID,
    PhaxioStub,
    callback_body,
    calls,
    fax_resource,
    phaxio_signature,
    running_phaxio_stub,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

A, B = "tenant-a", "tenant-b"
SETTINGS = {
    tenant: {
        "api_key": f"key-of-{tenant}",
        "api_secret": f"secret-of-{tenant}-" + "9" * 16,
        "callback_token": f"callback-token-of-{tenant}-" + "7" * 16,
        "caller_id": caller_id,
        "callback_url": f"https://corral.example.com/webhook/phaxio/{tenant}/fax-status",
    }
    for tenant, caller_id in ((A, "+15550001111"), (B, "+15550003333"))
}
TO = "+15551234567"
DOCUMENT = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stub() -> AsyncIterator[PhaxioStub]:
    async with running_phaxio_stub() as stub:
        yield stub


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api(stub: PhaxioStub) -> AsyncIterator[Api]:
    async with running_api(environ=stub.egress_environ()) as api:
        for tenant, settings in SETTINGS.items():
            answer = await api.call(
                "PUT",
                f"/plugins/{PHAXIO}/config?tenant_id={tenant}",
                json_body={"enabled": True, "settings": settings},
            )
            assert answer.status == 200, answer.text
        yield api


async def fax_call(api: Api, tenant: str, method: str, args: SendFax | FaxQuery) -> FaxJob:
    job: FaxJob = await api.service.host.supervisor.call(
        ActivationKey(tenant, PHAXIO),
        f"outbound_fax.{method}",
        args,
        timeout_s=15,
        result_type=FaxJob,
    )
    return job


async def test_send_fax_posts_the_tenants_multipart_request_to_the_stub(
    api: Api, stub: PhaxioStub
) -> None:
    sent = SendFax(
        to=TO,
        document=DOCUMENT,
        filename="chart notes.pdf",
        header_text="Clinic",
        tags={"ref": "42"},
    )
    for tenant in (A, B):
        before = len(stub.received)
        result = await api.service.host.dispatcher.dispatch(
            tenant, "outbound_fax", "send_fax", sent
        )
        job = result.result
        assert isinstance(job, FaxJob)
        (received,) = stub.received[before:]
        settings = SETTINGS[tenant]
        assert (received.method, received.path, received.host) == (
            "POST",
            "/v2.1/faxes",
            "api.phaxio.com",
        )
        assert received.authorization == basic_auth(settings["api_key"], settings["api_secret"])
        assert received.fields == {
            "to": TO,
            "caller_id": settings["caller_id"],
            "header_text": "Clinic",
            "callback_url": settings["callback_url"],
            "tags[ref]": "42",
        }
        document = received.files["file"]
        assert (document.filename, document.content_type) == ("chart_notes.pdf", "application/pdf")
        assert document.data == DOCUMENT
        assert job == FaxJob(job_id=str(stub.fax_ids[-1]), status="queued")


async def test_get_status_maps_the_stubs_answers(api: Api, stub: PhaxioStub) -> None:
    done = await fax_call(api, A, "get_status", FaxQuery(job_id="777"))
    assert stub.received[-1].method == "GET" and stub.received[-1].path == "/v2.1/faxes/777"
    assert stub.received[-1].authorization == basic_auth(
        SETTINGS[A]["api_key"], SETTINGS[A]["api_secret"]
    )
    assert done == FaxJob(job_id="777", status="success", provider_status="success", pages=2)
    failed = await fax_call(api, B, "get_status", FaxQuery(job_id=FAILED_FAX_ID))
    assert failed == FaxJob(
        job_id=FAILED_FAX_ID,
        status="failed",
        provider_status="failure",
        pages=2,
        error_code="lineError",
        error_message="Busy line at +1555***4567",  # the plugin masks numbers
    )


@pytest.mark.parametrize(
    ("method", "args", "code", "text"),
    [
        ("send_fax", SendFax(to=INVALID_NUMBER, document=DOCUMENT), "invalid_recipient", "422"),
        ("get_status", FaxQuery(job_id=UNKNOWN_FAX_ID), "not_found", "Fax not found"),
    ],
)
async def test_a_provider_error_becomes_a_typed_plugin_error(
    api: Api, stub: PhaxioStub, method: str, args: SendFax | FaxQuery, code: str, text: str
) -> None:
    before = len(stub.received)
    with pytest.raises(RemoteError) as caught:
        await fax_call(api, A, method, args)
    assert len(stub.received) == before + 1  # it did reach the stub
    error = caught.value
    assert error.code == ErrorCode.PLUGIN_ERROR
    assert (error.data["code"], error.data["retryable"]) == (code, False)
    assert text in error.message and INVALID_NUMBER not in error.message


async def post_callback(api: Api, route_tenant: str, token: str, body: bytes) -> Answer:
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


async def test_a_signed_callback_reaches_only_the_signing_tenants_worker(api: Api) -> None:
    body = callback_body(fax_resource(9100, "success"))
    before_a, before_b = calls(api, A, PHAXIO), calls(api, B, PHAXIO)
    answer = await post_callback(api, A, SETTINGS[A]["callback_token"], body)
    assert answer.status == 200, answer.text
    assert answer.body == {"fax_id": "9100", "status": "success", "tenant": A}
    assert (calls(api, A, PHAXIO), calls(api, B, PHAXIO)) == (before_a + 1, before_b)


async def test_a_wrong_signature_is_401_audited_and_forwards_nothing(api: Api) -> None:
    body = callback_body(fax_resource(9101, "failure"))
    before_a, before_b = calls(api, A, PHAXIO), calls(api, B, PHAXIO)
    for token in (SETTINGS[B]["callback_token"], "not-the-token"):
        answer = await post_callback(api, A, token, body)
        assert (answer.status, answer.body["error"]) == (401, "invalid_signature")
    unsigned = await api.call(
        "POST", f"/webhook/phaxio/{A}/fax-status", key=None, data=body, check_documented=False
    )
    assert unsigned.status == 401
    assert (calls(api, A, PHAXIO), calls(api, B, PHAXIO)) == (before_a, before_b)
    audit = [json.loads(line) for line in api.service.audit.settings.path.read_text().splitlines()]
    refusals = [e for e in audit if e["action"] == "webhook.verify"][-3:]
    assert [(e["tenant"], e["outcome"], e["details"]["reason"]) for e in refusals] == [
        (A, "denied", "bad_signature"),
        (A, "denied", "bad_signature"),
        (A, "denied", "missing_signature"),
    ]
