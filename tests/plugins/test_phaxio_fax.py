"""The Phaxio fax plugin, driven through the protocol with a scripted `http.request`."""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import pytest

from plugins.sdk import FaxJob, FaxQuery, SendFax, WebhookRequest, WebhookResponse
from protocol import Endpoint, ErrorCode, HttpResponse, RemoteError, config_schema, load_manifest

from .fakes import (
    PLUGINS,
    FakeHttp,
    Part,
    basic_auth,
    header,
    json_answer,
    parse_multipart,
    serve,
    start_real_worker,
)

PLUGIN_ID = "dev.corral.phaxio-fax"
BUNDLE = "phaxio_fax"
API_KEY = "key-5c1f0e7a"
API_SECRET = "secret-0d9c8b7a6f5e4d3c"
CALLBACK_TOKEN = "cbtok-1a2b3c4d5e6f"
CALLER_ID = "+15550002222"
TO = "+15551234567"
TO_MASKED = "+1555***4567"
DOCUMENT = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
CALLBACK_URL = "https://corral.example.com/webhook/phaxio/tenant-a/fax-status"
API = "https://api.phaxio.com/v2.1"
CONFIG: dict[str, Any] = {
    "api_key": API_KEY,
    "api_secret": API_SECRET,
    "callback_token": CALLBACK_TOKEN,
    "caller_id": CALLER_ID,
}

SEND_FAX = "outbound_fax.send_fax"
GET_STATUS = "outbound_fax.get_status"
CANCEL_FAX = "outbound_fax.cancel_fax"
HANDLE = "webhook_handler.handle"


def ok(data: dict[str, Any] | None = None, message: str = "ok") -> HttpResponse:
    body: dict[str, Any] = {"success": True, "message": message}
    if data is not None:
        body["data"] = data
    return json_answer(200, body)


def fax(status: str, **extra: Any) -> dict[str, Any]:
    """A Phaxio fax resource as GET /v2.1/faxes/{id} returns it."""
    return {
        "id": 12345,
        "direction": "sent",
        "num_pages": 3,
        "status": status,
        "is_test": True,
        "caller_id": CALLER_ID,
        "recipients": [{"phone_number": TO, "status": status, "error_type": None}],
        "error_type": None,
        "error_id": None,
        "error_message": None,
        **extra,
    }


async def call(host: Endpoint, method: str, args: Any) -> FaxJob:
    job: FaxJob = await host.request(method, args, result_type=FaxJob)
    return job


def test_manifest_loads_with_routes_and_secrets() -> None:
    manifest = load_manifest(PLUGINS / BUNDLE)
    assert manifest.id == PLUGIN_ID
    assert manifest.url_slug == "phaxio"
    assert manifest.entrypoint == "phaxio_fax"
    assert manifest.outbound_hosts == ["api.phaxio.com"]
    assert [c.kind for c in manifest.categories] == ["outbound_fax", "webhook_handler"]
    assert manifest.secret_fields == {"api_secret", "callback_token"}
    (route,) = manifest.webhook
    assert (route.route_id, route.path, route.methods) == ("fax-status", "/fax-status", ["POST"])
    assert (route.verify, route.secret_field) == ("hmac-sha256", "callback_token")
    assert route.signature_header == "X-Phaxio-Signature"
    assert config_schema(manifest)["required"] == ["api_key", "api_secret"]


async def test_handshake_reports_categories_and_methods() -> None:
    async with serve(BUNDLE, PLUGIN_ID, CONFIG) as (_, info):
        assert info.plugin_id == PLUGIN_ID and info.plugin_version == "1.0.0"
        assert info.categories == ["outbound_fax", "webhook_handler"]
        assert sorted(info.methods) == [CANCEL_FAX, GET_STATUS, SEND_FAX, HANDLE]


async def test_send_fax_posts_multipart_document_with_basic_auth() -> None:
    http = FakeHttp(ok({"id": 12345}, "Fax queued for sending"))
    config = {**CONFIG, "callback_url": CALLBACK_URL}
    args = SendFax(
        to=TO,
        document=DOCUMENT,
        filename='re"port\r\n.pdf',
        header_text="ACME Clinic",
        tags={"order": "A-17", "batch": "7"},
    )
    async with serve(BUNDLE, PLUGIN_ID, config, http) as (host, _):
        job = await call(host, SEND_FAX, args)
    request = http.only
    assert (request.method, request.url) == ("POST", f"{API}/faxes")
    assert header(request, "Authorization") == basic_auth(API_KEY, API_SECRET)
    content_type = header(request, "Content-Type")
    assert content_type is not None and content_type.startswith("multipart/form-data; boundary=")
    assert parse_multipart(content_type, request.body) == [
        Part("to", None, "text/plain", TO.encode()),
        Part("caller_id", None, "text/plain", CALLER_ID.encode()),
        Part("header_text", None, "text/plain", b"ACME Clinic"),
        Part("callback_url", None, "text/plain", CALLBACK_URL.encode()),
        Part("tags[batch]", None, "text/plain", b"7"),
        Part("tags[order]", None, "text/plain", b"A-17"),
        Part("file", "re_port__.pdf", "application/pdf", DOCUMENT),
    ]
    assert job == FaxJob(job_id="12345", status="queued")


async def test_send_fax_by_content_url_with_caller_id_override() -> None:
    http = FakeHttp(ok({"id": 777}))
    args = SendFax(to=TO, content_url="https://files.example.com/a.pdf", caller_id="+15553334444")
    async with serve(BUNDLE, PLUGIN_ID, {"api_key": API_KEY, "api_secret": API_SECRET}, http) as (
        host,
        _,
    ):
        job = await call(host, SEND_FAX, args)
    content_type = header(http.only, "Content-Type")
    assert content_type is not None
    assert parse_multipart(content_type, http.only.body) == [
        Part("to", None, "text/plain", TO.encode()),
        Part("content_url", None, "text/plain", b"https://files.example.com/a.pdf"),
        Part("caller_id", None, "text/plain", b"+15553334444"),
    ]
    assert job.job_id == "777"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"to": "5551234567"}, "invalid_recipient"),
        ({"to": "+1 555 123 4567"}, "invalid_recipient"),
        ({"document": None}, "invalid_request"),
        ({"content_url": "https://files.example.com/a.pdf"}, "invalid_request"),
        ({"document": b""}, "invalid_request"),
        ({"document": None, "content_url": "file:///etc/passwd"}, "invalid_request"),
        ({"content_type": "application/pdf\r\nX-Evil: 1"}, "invalid_request"),
        ({"caller_id": "0800"}, "invalid_sender"),
        ({"header_text": "x" * 51}, "invalid_request"),
        ({"header_text": "line\nbreak"}, "invalid_request"),
        ({"tags": {'bad"name': "v"}}, "invalid_request"),
    ],
)
async def test_send_fax_rejects_bad_requests_before_any_http(
    fields: dict[str, Any], code: str
) -> None:
    http = FakeHttp()
    args = SendFax(**{"to": TO, "document": DOCUMENT, **fields})
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await call(host, SEND_FAX, args)
    assert caught.value.code == ErrorCode.PLUGIN_ERROR
    assert caught.value.data == {"code": code, "retryable": False}
    assert http.requests == []


async def test_get_status_fetches_fax_by_id() -> None:
    http = FakeHttp(ok(fax("inprogress")))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, GET_STATUS, FaxQuery(job_id="12345"))
    request = http.only
    assert (request.method, request.url, request.body) == ("GET", f"{API}/faxes/12345", b"")
    assert header(request, "Authorization") == basic_auth(API_KEY, API_SECRET)
    assert job == FaxJob(
        job_id="12345", status="in_progress", provider_status="inprogress", pages=3
    )


@pytest.mark.parametrize(
    ("provider_status", "status"),
    [
        ("queued", "queued"),
        ("pendingbatch", "queued"),
        ("inprogress", "in_progress"),
        ("success", "success"),
        ("failure", "failed"),
        ("partialsuccess", "failed"),
        ("cancelled", "cancelled"),
        ("canceled", "cancelled"),
        ("somethingnew", "in_progress"),
    ],
)
async def test_get_status_maps_phaxio_statuses(provider_status: str, status: str) -> None:
    http = FakeHttp(ok(fax(provider_status)))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, GET_STATUS, FaxQuery(job_id="12345"))
    assert (job.status, job.provider_status) == (status, provider_status)


async def test_get_status_reports_the_recipient_error_of_a_failed_fax() -> None:
    recipient = {
        "phone_number": TO,
        "status": "failure",
        "error_type": "lineError",
        "error_id": 34,
        "error_message": f"Busy line at {TO}",
    }
    http = FakeHttp(ok(fax("failure", recipients=[recipient])))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, GET_STATUS, FaxQuery(job_id="12345"))
    assert job == FaxJob(
        job_id="12345",
        status="failed",
        provider_status="failure",
        pages=3,
        error_code="lineError",
        error_message=f"Busy line at {TO_MASKED}",
    )


async def test_cancel_fax_posts_to_cancel_endpoint() -> None:
    http = FakeHttp(ok({"id": 12345}, "Fax canceled successfully."))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, CANCEL_FAX, FaxQuery(job_id="12345"))
    request = http.only
    assert (request.method, request.url) == ("POST", f"{API}/faxes/12345/cancel")
    assert header(request, "Authorization") == basic_auth(API_KEY, API_SECRET)
    assert job == FaxJob(job_id="12345", status="cancelled")


@pytest.mark.parametrize("method", [GET_STATUS, CANCEL_FAX])
@pytest.mark.parametrize("job_id", ["", "12/../34", "abc", "1" * 21])
async def test_bad_job_id_is_refused_before_any_http(method: str, job_id: str) -> None:
    http = FakeHttp()
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await call(host, method, FaxQuery(job_id=job_id))
    assert caught.value.data == {"code": "invalid_request", "retryable": False}
    assert http.requests == []


def phaxio_error(status: int, text: str, **headers: str) -> HttpResponse:
    return json_answer(status, {"success": False, "message": text}, headers)


@pytest.mark.parametrize(
    ("answer", "code", "retryable"),
    [
        (phaxio_error(401, "Invalid API credentials"), "auth_failed", False),
        (phaxio_error(402, "Insufficient funds"), "insufficient_funds", False),
        (phaxio_error(404, "Fax not found"), "not_found", False),
        (phaxio_error(422, f"Phone number {TO} is not valid"), "invalid_recipient", False),
        (phaxio_error(422, "File type not supported"), "invalid_request", False),
        (phaxio_error(429, "Rate limit exceeded", **{"Retry-After": "30"}), "rate_limited", True),
        (phaxio_error(500, "Internal error"), "provider_error", True),
        (HttpResponse(status=503, body=b"<html>down</html>"), "provider_error", True),
        (HttpResponse(status=200, body=b"<html>login</html>"), "provider_error", False),
        (json_answer(200, {"success": False, "message": "nope"}), "provider_error", False),
    ],
)
async def test_provider_answers_map_to_plugin_errors(
    answer: HttpResponse, code: str, retryable: bool
) -> None:
    http = FakeHttp(answer)
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await call(host, SEND_FAX, SendFax(to=TO, document=DOCUMENT))
    error = caught.value
    assert error.code == ErrorCode.PLUGIN_ERROR
    assert (error.data["code"], error.data["retryable"]) == (code, retryable)
    assert TO not in error.message and API_SECRET not in error.message
    if code == "rate_limited":
        assert error.data["retry_after_s"] == 30
    if code == "invalid_recipient":
        assert TO_MASKED in error.message


async def test_a_success_without_a_fax_id_is_a_provider_error() -> None:
    http = FakeHttp(ok({}))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await call(host, SEND_FAX, SendFax(to=TO, document=DOCUMENT))
    assert caught.value.data["code"] == "provider_error"


@pytest.mark.parametrize(
    "code", [ErrorCode.EGRESS_DENIED, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT]
)
async def test_host_refusals_keep_their_code(code: ErrorCode) -> None:
    http = FakeHttp(RemoteError(code, "api.phaxio.com is not granted"))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await call(host, GET_STATUS, FaxQuery(job_id="12345"))
    assert caught.value.code == code
    assert caught.value.message == "Phaxio request not completed: api.phaxio.com is not granted"
    assert caught.value.data == {"code": code, "retryable": code == ErrorCode.TIMEOUT}


@pytest.mark.parametrize(
    "config",
    [
        {"api_key": API_KEY},
        {"api_key": API_KEY, "api_secret": ""},
        {**CONFIG, "caller_id": "5550002222"},
        {**CONFIG, "callback_url": "ftp://example.com"},
        {**CONFIG, "api_key": 7},
    ],
)
async def test_bad_config_fails_the_handshake(config: dict[str, Any]) -> None:
    with pytest.raises(RemoteError) as caught:
        async with serve(BUNDLE, PLUGIN_ID, config):
            pass
    assert caught.value.code == ErrorCode.PLUGIN_ERROR
    # The handshake says which field is wrong, and never its value.
    assert caught.value.data == {"code": "invalid_config"}
    assert caught.value.message.startswith("config field")


def status_callback(content_type: str, body: bytes, verified: bool = True) -> WebhookRequest:
    return WebhookRequest(
        route_id="fax-status",
        method="POST",
        path="/fax-status",
        headers={"content-type": content_type, "X-Phaxio-Signature": "ab" * 32},
        body=body,
        verified=verified,
    )


CALLBACK_FAX = fax("success", completed_at="2024-05-01T12:00:00.000Z")
FORM_CALLBACK = status_callback(
    "application/x-www-form-urlencoded",
    urllib.parse.urlencode(
        {"success": "true", "is_test": "true", "direction": "sent", "fax": json.dumps(CALLBACK_FAX)}
    ).encode(),
)
JSON_CALLBACK = status_callback(
    "application/json; charset=utf-8",
    json.dumps({"event_type": "fax_completed", "fax": CALLBACK_FAX}).encode(),
)
MULTIPART_CALLBACK = status_callback(
    "multipart/form-data; boundary=xyz",
    (
        '--xyz\r\nContent-Disposition: form-data; name="direction"\r\n\r\nsent\r\n'
        f'--xyz\r\nContent-Disposition: form-data; name="fax"\r\n\r\n{json.dumps(CALLBACK_FAX)}\r\n'
        "--xyz--\r\n"
    ).encode(),
)


async def handle(request: WebhookRequest) -> WebhookResponse:
    async with serve(BUNDLE, PLUGIN_ID, CONFIG) as (host, _):
        response: WebhookResponse = await host.request(HANDLE, request, result_type=WebhookResponse)
        return response


@pytest.mark.parametrize(
    "request_",
    [FORM_CALLBACK, JSON_CALLBACK, MULTIPART_CALLBACK],
    ids=["form", "json", "multipart"],
)
async def test_status_callback_is_parsed_and_answered_200(
    request_: WebhookRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=f"plugin.{PLUGIN_ID}")
    response = await handle(request_)
    assert (response.status, response.headers) == (200, {"Content-Type": "application/json"})
    assert json.loads(response.body) == {
        "fax_id": "12345",
        "status": "success",
        "tenant": "tenant-a",
    }
    assert "fax 12345 is success (success)" in caplog.text


async def test_unverified_callback_is_refused_401() -> None:
    unverified = status_callback("application/json", JSON_CALLBACK.body, verified=False)
    assert (await handle(unverified)).status == 401


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{not json"),
        ("application/json", b"[1, 2]"),
        ("application/json", b'{"fax": {"status": "success"}}'),
        ("application/x-www-form-urlencoded", b"success=true"),
        ("application/x-www-form-urlencoded", b"fax=%7Bbroken"),
        ("application/x-www-form-urlencoded", b"fax=\xff"),
    ],
)
async def test_malformed_callback_is_refused_400(content_type: str, body: bytes) -> None:
    assert (await handle(status_callback(content_type, body))).status == 400


async def test_callback_on_other_route_or_method_is_refused() -> None:
    wrong_route = WebhookRequest(route_id="other", method="POST", path="/other", verified=True)
    wrong_method = WebhookRequest(route_id="fax-status", method="PUT", path="/", verified=True)
    assert (await handle(wrong_route)).status == 404
    assert await handle(wrong_method) == WebhookResponse(status=405, headers={"Allow": "POST"})


async def test_logs_never_show_secrets_documents_or_full_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    http = FakeHttp(ok({"id": 12345}), phaxio_error(422, f"Phone number {TO} is not valid"))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        await call(host, SEND_FAX, SendFax(to=TO, document=DOCUMENT))
        with pytest.raises(RemoteError):
            await call(host, SEND_FAX, SendFax(to=TO, document=DOCUMENT))
        await host.request(HANDLE, FORM_CALLBACK, result_type=WebhookResponse)
    assert TO_MASKED in caplog.text  # the test does look at the plugin's log lines
    for secret in (API_SECRET, CALLBACK_TOKEN, basic_auth(API_KEY, API_SECRET), TO, "%PDF"):
        assert secret not in caplog.text


@pytest.mark.integration
async def test_real_worker_reports_unavailable_egress_cleanly() -> None:
    worker = await start_real_worker(BUNDLE, PLUGIN_ID, CONFIG)
    try:
        assert worker.info is not None
        assert worker.info.categories == ["outbound_fax", "webhook_handler"]
        with pytest.raises(RemoteError) as caught:
            await worker.call(GET_STATUS, FaxQuery(job_id="12345"), timeout_s=10)
        assert caught.value.code == ErrorCode.UNAVAILABLE
        assert caught.value.message.startswith("Phaxio request not completed:")
        assert worker.is_alive
        await worker.ping(timeout_s=5)
    finally:
        status = await worker.stop()
    assert status == 0
    stderr = "\n".join(worker.stderr_tail)
    assert API_SECRET not in stderr and CALLBACK_TOKEN not in stderr
