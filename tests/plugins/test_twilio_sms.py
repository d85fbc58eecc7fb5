"""The Twilio SMS plugin, driven through the protocol with a scripted `http.request`."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import pytest

from plugins.sdk import (
    NotificationReceipt,
    NotificationStatusQuery,
    SendNotification,
    WebhookRequest,
    WebhookResponse,
)
from protocol import Endpoint, ErrorCode, HttpResponse, RemoteError, config_schema, load_manifest

from .fakes import PLUGINS, FakeHttp, basic_auth, header, json_answer, serve, start_real_worker

PLUGIN_ID = "dev.corral.twilio-sms"
BUNDLE = "twilio_sms"
SID = "AC" + "0123456789abcdef" * 2
TOKEN = "tok-9f8e7d6c5b4a39281706"
FROM = "+15550001111"
TO = "+15551234567"
TO_MASKED = "+1555***4567"
BODY = "Your verification code is 481516"
SERVICE = "MG" + "fedcba9876543210" * 2
MESSAGE_SID = "SM" + "a1b2c3d4" * 4
CALLBACK = "https://corral.example.com/webhook/twilio/tenant-a/sms-status"
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages"
CONFIG: dict[str, Any] = {"account_sid": SID, "auth_token": TOKEN, "from_number": FROM}

SEND = "notification_channel.send"
GET_STATUS = "notification_channel.get_status"
HANDLE = "webhook_handler.handle"


def message(status: str = "queued", **extra: Any) -> dict[str, Any]:
    """A Twilio message resource as the Messages API returns it."""
    return {
        "sid": MESSAGE_SID,
        "account_sid": SID,
        "to": TO,
        "from": FROM,
        "body": BODY,
        "status": status,
        "error_code": None,
        "error_message": None,
        **extra,
    }


async def send(host: Endpoint, **fields: Any) -> NotificationReceipt:
    args = SendNotification(**{"recipient": TO, "body": BODY, **fields})
    receipt: NotificationReceipt = await host.request(SEND, args, result_type=NotificationReceipt)
    return receipt


def form(request_body: bytes) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(request_body.decode("ascii"), strict_parsing=True)


def test_manifest_loads_with_routes_and_secrets() -> None:
    manifest = load_manifest(PLUGINS / BUNDLE)
    assert manifest.id == PLUGIN_ID
    assert manifest.url_slug == "twilio"
    assert manifest.entrypoint == "twilio_sms"
    assert manifest.outbound_hosts == ["api.twilio.com"]
    assert [c.kind for c in manifest.categories] == ["notification_channel", "webhook_handler"]
    assert manifest.secret_fields == {"auth_token"}
    (route,) = manifest.webhook
    assert (route.route_id, route.path, route.methods) == ("sms-status", "/sms-status", ["POST"])
    assert (route.verify, route.secret_field) == ("twilio", "auth_token")
    assert route.signature_header == "X-Twilio-Signature"
    assert route.max_body_bytes <= 64 * 1024 and route.timeout_seconds <= 10
    schema = config_schema(manifest)
    assert schema["required"] == ["account_sid", "auth_token", "from_number"]
    assert schema["properties"]["status_callback_url"]["format"] == "uri"


async def test_handshake_reports_categories_and_methods() -> None:
    async with serve(BUNDLE, PLUGIN_ID, CONFIG) as (_, info):
        assert info.plugin_id == PLUGIN_ID and info.plugin_version == "1.0.0"
        assert info.categories == ["notification_channel", "webhook_handler"]
        assert sorted(info.methods) == [GET_STATUS, SEND, HANDLE]


async def test_send_posts_form_to_messages_api_with_basic_auth() -> None:
    http = FakeHttp(json_answer(201, message()))
    config = {**CONFIG, "status_callback_url": CALLBACK}
    async with serve(BUNDLE, PLUGIN_ID, config, http) as (host, _):
        receipt = await send(host)
    request = http.only
    assert (request.method, request.url) == ("POST", f"{MESSAGES_URL}.json")
    assert header(request, "Authorization") == basic_auth(SID, TOKEN)
    assert header(request, "Content-Type") == "application/x-www-form-urlencoded"
    assert header(request, "Accept") == "application/json"
    assert form(request.body) == [
        ("To", TO),
        ("From", FROM),
        ("Body", BODY),
        ("StatusCallback", CALLBACK),
    ]
    assert receipt == NotificationReceipt(message_id=MESSAGE_SID, status="queued")


async def test_send_uses_messaging_service_unless_a_sender_is_given() -> None:
    http = FakeHttp(json_answer(201, message("accepted")), json_answer(201, message()))
    config = {**CONFIG, "messaging_service_sid": SERVICE}
    async with serve(BUNDLE, PLUGIN_ID, config, http) as (host, _):
        receipt = await send(host, status_callback_url=CALLBACK)
        await send(host, sender="+15559998888")
    assert receipt.status == "accepted"
    assert form(http.requests[0].body) == [
        ("To", TO),
        ("MessagingServiceSid", SERVICE),
        ("Body", BODY),
        ("StatusCallback", CALLBACK),
    ]
    assert form(http.requests[1].body) == [("To", TO), ("From", "+15559998888"), ("Body", BODY)]


async def test_get_status_fetches_message_by_sid() -> None:
    answer = message("undelivered", error_code=30003, error_message=f"Unreachable {TO}")
    http = FakeHttp(json_answer(200, answer))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        receipt = await host.request(
            GET_STATUS,
            NotificationStatusQuery(message_id=MESSAGE_SID),
            result_type=NotificationReceipt,
        )
    request = http.only
    assert (request.method, request.url) == ("GET", f"{MESSAGES_URL}/{MESSAGE_SID}.json")
    assert request.body == b""
    assert header(request, "Authorization") == basic_auth(SID, TOKEN)
    assert receipt == NotificationReceipt(
        message_id=MESSAGE_SID,
        status="undelivered",
        error_code="30003",
        error_message=f"Unreachable {TO_MASKED}",
    )


def twilio_error(status: int, code: int, text: str, **headers: str) -> HttpResponse:
    body = {
        "code": code,
        "message": text,
        "more_info": "https://www.twilio.com/docs",
        "status": status,
    }
    return json_answer(status, body, headers)


@pytest.mark.parametrize(
    ("answer", "code", "retryable"),
    [
        (
            twilio_error(400, 21211, f"The 'To' number {TO} is not valid."),
            "invalid_recipient",
            False,
        ),
        (twilio_error(400, 21614, "not a mobile number"), "invalid_recipient", False),
        (twilio_error(400, 21212, "invalid From number"), "invalid_sender", False),
        (twilio_error(400, 21610, "unsubscribed recipient"), "recipient_opted_out", False),
        (twilio_error(400, 21602, "Message body is required."), "invalid_request", False),
        (twilio_error(401, 20003, "Authenticate"), "auth_failed", False),
        (twilio_error(404, 20404, "not found"), "not_found", False),
        (
            twilio_error(429, 20429, "Too Many Requests", **{"Retry-After": "7"}),
            "rate_limited",
            True,
        ),
        (twilio_error(503, 20503, "Service unavailable"), "provider_error", True),
        (HttpResponse(status=502, body=b"<html>Bad gateway</html>"), "provider_error", True),
        (HttpResponse(status=400, body=b"not json"), "provider_error", False),
        (HttpResponse(status=201, body=b"<xml/>"), "provider_error", False),
        (json_answer(201, ["not", "an", "object"]), "provider_error", False),
        (json_answer(201, {"status": "queued"}), "provider_error", False),
    ],
)
async def test_send_maps_provider_answers_to_plugin_errors(
    answer: HttpResponse, code: str, retryable: bool
) -> None:
    http = FakeHttp(answer)
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await send(host)
    error = caught.value
    assert error.code == ErrorCode.PLUGIN_ERROR
    assert error.data["code"] == code
    assert error.data["retryable"] is retryable
    assert TO not in error.message and TOKEN not in error.message
    if code == "rate_limited":
        assert error.data["retry_after_s"] == 7
    if code == "invalid_recipient" and "21211" in error.message:
        assert TO_MASKED in error.message
        assert error.data["provider_code"] == "21211"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"recipient": "5551234567"}, "invalid_recipient"),
        ({"recipient": "+0155512345"}, "invalid_recipient"),
        ({"recipient": "+1555123456789012"}, "invalid_recipient"),
        ({"sender": "555-000"}, "invalid_sender"),
        ({"body": "   "}, "invalid_request"),
        ({"body": "x" * 1601}, "invalid_request"),
        ({"kind": "email"}, "unsupported_kind"),
        ({"status_callback_url": "ftp://example.com/cb"}, "invalid_request"),
    ],
)
async def test_send_rejects_bad_requests_before_any_http(fields: dict[str, Any], code: str) -> None:
    http = FakeHttp()
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await send(host, **fields)
    assert caught.value.code == ErrorCode.PLUGIN_ERROR
    assert caught.value.data == {"code": code, "retryable": False}
    assert http.requests == []


async def test_get_status_rejects_a_malformed_sid_before_any_http() -> None:
    http = FakeHttp()
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await host.request(GET_STATUS, NotificationStatusQuery(message_id="../Calls"))
    assert caught.value.data["code"] == "invalid_request"
    assert http.requests == []


@pytest.mark.parametrize(
    "code", [ErrorCode.EGRESS_DENIED, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT]
)
async def test_host_refusals_keep_their_code(code: ErrorCode) -> None:
    http = FakeHttp(RemoteError(code, "api.twilio.com is not granted"))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as caught:
            await send(host)
    assert caught.value.code == code
    assert caught.value.message == "Twilio request not completed: api.twilio.com is not granted"
    assert caught.value.data == {"code": code, "retryable": code == ErrorCode.TIMEOUT}
    assert http.only.url == f"{MESSAGES_URL}.json"


@pytest.mark.parametrize(
    "config",
    [
        {"account_sid": SID, "from_number": FROM},
        {**CONFIG, "account_sid": "AC123"},
        {**CONFIG, "from_number": "5550001111"},
        {**CONFIG, "messaging_service_sid": "MG1"},
        {**CONFIG, "auth_token": 42},
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


def callback(verified: bool = True, **fields: str) -> WebhookRequest:
    values = {
        "MessageSid": MESSAGE_SID,
        "MessageStatus": "undelivered",
        "ErrorCode": "30006",
        "AccountSid": SID,
        "To": TO,
        "From": FROM,
        **fields,
    }
    return WebhookRequest(
        route_id="sms-status",
        method="POST",
        path="/sms-status",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
        body=urllib.parse.urlencode(values).encode(),
        verified=verified,
    )


async def handle(request: WebhookRequest) -> WebhookResponse:
    async with serve(BUNDLE, PLUGIN_ID, CONFIG) as (host, _):
        response: WebhookResponse = await host.request(HANDLE, request, result_type=WebhookResponse)
        return response


async def test_status_callback_is_parsed_and_answered_204(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=f"plugin.{PLUGIN_ID}")
    response = await handle(callback())
    assert response == WebhookResponse(status=204)
    assert f"message {MESSAGE_SID} to {TO_MASKED} is undelivered (error 30006)" in caplog.text


async def test_status_callback_accepts_legacy_sms_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=f"plugin.{PLUGIN_ID}")
    legacy = callback(MessageSid="", MessageStatus="", SmsSid=MESSAGE_SID, SmsStatus="sent")
    assert (await handle(legacy)).status == 204
    assert f"message {MESSAGE_SID} to {TO_MASKED} is sent (error 30006)" in caplog.text


async def test_unverified_callback_is_refused_401() -> None:
    assert (await handle(callback(verified=False))).status == 401


@pytest.mark.parametrize(
    "request_",
    [
        callback(MessageSid=""),
        callback(MessageStatus=""),
        WebhookRequest(
            route_id="sms-status", method="POST", path="/", body=b"\xff\xfe", verified=True
        ),
    ],
)
async def test_malformed_callback_is_refused_400(request_: WebhookRequest) -> None:
    assert (await handle(request_)).status == 400


async def test_callback_on_other_route_or_method_is_refused() -> None:
    wrong_route = WebhookRequest(route_id="other", method="POST", path="/other", verified=True)
    wrong_method = WebhookRequest(route_id="sms-status", method="GET", path="/", verified=True)
    assert (await handle(wrong_route)).status == 404
    assert await handle(wrong_method) == WebhookResponse(status=405, headers={"Allow": "POST"})


async def test_logs_never_show_secrets_bodies_or_full_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    http = FakeHttp(
        json_answer(201, message()),
        twilio_error(400, 21211, f"The 'To' number {TO} is not valid."),
    )
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        await send(host)
        with pytest.raises(RemoteError):
            await send(host)
        await host.request(HANDLE, callback(), result_type=WebhookResponse)
    assert TO_MASKED in caplog.text  # the test does look at the plugin's log lines
    for secret in (TOKEN, basic_auth(SID, TOKEN), BODY, TO, FROM):
        assert secret not in caplog.text


@pytest.mark.integration
async def test_real_worker_reports_unavailable_egress_cleanly() -> None:
    worker = await start_real_worker(BUNDLE, PLUGIN_ID, CONFIG)
    try:
        assert worker.info is not None
        assert worker.info.categories == ["notification_channel", "webhook_handler"]
        with pytest.raises(RemoteError) as caught:
            await worker.call(SEND, SendNotification(recipient=TO, body=BODY), timeout_s=10)
        assert caught.value.code == ErrorCode.UNAVAILABLE
        assert caught.value.message.startswith("Twilio request not completed:")
        assert worker.is_alive
        await worker.ping(timeout_s=5)
    finally:
        status = await worker.stop()
    assert status == 0
    stderr = "\n".join(worker.stderr_tail)
    assert TOKEN not in stderr and TO not in stderr and BODY not in stderr
