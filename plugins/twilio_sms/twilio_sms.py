"""Twilio SMS: send and look up messages through Twilio's Messages API, and read its
MessageStatus callbacks.

The worker has no network: every request goes through the host's `http.request` (`ctx.http`),
which enforces the manifest's egress grant. Core verifies `X-Twilio-Signature` before `handle` runs.
Message bodies, full phone numbers and secrets are never logged.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from plugins.sdk import (
    Context,
    HttpResponse,
    NotificationReceipt,
    NotificationStatusQuery,
    Plugin,
    PluginError,
    RemoteError,
    SendNotification,
    WebhookRequest,
    WebhookResponse,
)
from plugins.sdk.providers import (
    ConfigError,
    basic_auth,
    mask_number,
    provider_error,
    redact_numbers,
    refuse_webhook,
)

plugin = Plugin()

API_BASE: Final = "https://api.twilio.com/2010-04-01"
USER_AGENT: Final = "corral-twilio-sms/1.0.0"
REQUEST_TIMEOUT_S: Final = 15.0
MAX_BODY_CHARS: Final = 1600  # Twilio's limit for one message, after concatenation
STATUS_ROUTE: Final = "sms-status"
RETRYABLE_HOST_CODES: Final = frozenset({"timeout"})

_E164: Final = re.compile(r"^\+[1-9]\d{1,14}$")
_ACCOUNT_SID: Final = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID: Final = re.compile(r"^MG[0-9a-fA-F]{32}$")
_MESSAGE_SID: Final = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")

# Twilio error codes (https://www.twilio.com/docs/api/errors) grouped by what the caller does next.
_RECIPIENT_CODES: Final = frozenset({21211, 21214, 21217, 21407, 21408, 21421, 21612, 21614})
_SENDER_CODES: Final = frozenset({21212, 21606, 21659, 21660})
_OPTED_OUT_CODES: Final = frozenset({21610})
_AUTH_CODES: Final = frozenset({20003, 20005})
_RATE_CODES: Final = frozenset({20429, 14107})


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    """One tenant's validated Twilio config."""

    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str
    messaging_service_sid: str | None = None
    status_callback_url: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TwilioSettings:
        """Validate the plugin's config subtree; raise ConfigError naming the first bad field."""

        def text(name: str, *, required: bool = False) -> str | None:
            value = config.get(name)
            if value in (None, ""):
                if required:
                    raise ConfigError(f"config field {name!r} is required")
                return None
            if not isinstance(value, str):
                raise ConfigError(f"config field {name!r} must be a string")
            return value

        account_sid = text("account_sid", required=True) or ""
        auth_token = text("auth_token", required=True) or ""
        from_number = text("from_number", required=True) or ""
        service_sid = text("messaging_service_sid")
        callback = text("status_callback_url")
        if not _ACCOUNT_SID.match(account_sid):
            raise ConfigError("config field 'account_sid' must be AC followed by 32 hex digits")
        if not _E164.match(from_number):
            raise ConfigError(
                "config field 'from_number' must be an E.164 number like +15551234567"
            )
        if service_sid is not None and not _SERVICE_SID.match(service_sid):
            raise ConfigError("config field 'messaging_service_sid' must be MG + 32 hex digits")
        if callback is not None and not callback.startswith(("https://", "http://")):
            raise ConfigError("config field 'status_callback_url' must be an http(s) URL")
        return cls(account_sid, auth_token, from_number, service_sid, callback)


def _error_from_response(response: HttpResponse) -> PluginError:
    """Map a non-2xx Twilio answer to a PluginError with a stable `data["code"]`."""
    status = response.status
    try:
        body = json.loads(response.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return provider_error(
            f"Twilio answered HTTP {status} without a JSON error",
            "provider_error",
            retryable=status >= 500,
            http_status=status,
        )
    raw_code = body.get("code")
    provider_code = raw_code if isinstance(raw_code, int) else None
    text = redact_numbers(str(body.get("message") or "no message"))
    code, retryable = _classify(status, provider_code)
    retry_after = response.header("Retry-After")
    return provider_error(
        f"Twilio refused the request (HTTP {status}, error {provider_code}): {text}",
        code,
        retryable=retryable,
        http_status=status,
        provider_code=None if provider_code is None else str(provider_code),
        retry_after_s=int(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _classify(status: int, provider_code: int | None) -> tuple[str, bool]:
    if status == 429 or provider_code in _RATE_CODES:
        return "rate_limited", True
    if status >= 500:
        return "provider_error", True
    if status in (401, 403) or provider_code in _AUTH_CODES:
        return "auth_failed", False
    if provider_code in _RECIPIENT_CODES:
        return "invalid_recipient", False
    if provider_code in _SENDER_CODES:
        return "invalid_sender", False
    if provider_code in _OPTED_OUT_CODES:
        return "recipient_opted_out", False
    if status == 404:
        return "not_found", False
    if status in (400, 422):
        return "invalid_request", False
    return "provider_error", False


class TwilioApi:
    """Twilio's Messages resource over the host's `http.request`."""

    def __init__(self, ctx: Context, settings: TwilioSettings) -> None:
        self._ctx = ctx
        self._settings = settings
        self._messages_url = f"{API_BASE}/Accounts/{settings.account_sid}/Messages"
        self._authorization = basic_auth(settings.account_sid, settings.auth_token)

    async def create_message(self, form: list[tuple[str, str]]) -> dict[str, Any]:
        """POST a new message; return Twilio's JSON message resource."""
        body = urllib.parse.urlencode(form).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return await self._call("POST", f"{self._messages_url}.json", body, headers)

    async def fetch_message(self, sid: str) -> dict[str, Any]:
        """GET one message by its SID; return Twilio's JSON message resource."""
        return await self._call("GET", f"{self._messages_url}/{sid}.json", b"", {})

    async def _call(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        headers = {
            "Authorization": self._authorization,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **headers,
        }
        try:
            response = await self._ctx.http.request(
                method, url, headers=headers, body=body, timeout_s=REQUEST_TIMEOUT_S
            )
        except RemoteError as exc:
            # egress_denied, unavailable, timeout: keep the host's code so core can tell them apart.
            raise RemoteError(
                exc.code,
                f"Twilio request not completed: {exc.message}",
                {"code": exc.code, "retryable": exc.code in RETRYABLE_HOST_CODES},
            ) from exc
        if not 200 <= response.status < 300:
            raise _error_from_response(response)
        try:
            resource = json.loads(response.body)
        except ValueError:
            resource = None
        if not isinstance(resource, dict):
            raise provider_error(
                f"Twilio answered HTTP {response.status} with a body that is not a JSON object",
                "provider_error",
                http_status=response.status,
            )
        return resource


def _receipt(resource: dict[str, Any]) -> NotificationReceipt:
    sid, status = resource.get("sid"), resource.get("status")
    if not isinstance(sid, str) or not isinstance(status, str):
        raise provider_error("Twilio's answer lacks a message sid or status", "provider_error")
    error_code, error_message = resource.get("error_code"), resource.get("error_message")
    return NotificationReceipt(
        message_id=sid,
        status=status,
        error_code=None if error_code is None else str(error_code),
        error_message=None if error_message is None else redact_numbers(str(error_message)),
    )


@plugin.category("notification_channel")
class TwilioSms:
    """Send SMS through Twilio; `status` in receipts is Twilio's own word (queued, sent, ...)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._settings = TwilioSettings.from_config(ctx.config)
        self._api = TwilioApi(ctx, self._settings)

    async def send(self, args: SendNotification) -> NotificationReceipt:
        """Create a message; raise PluginError before any HTTP when the request is malformed."""
        form = self._form(args)
        resource = await self._api.create_message(form)
        receipt = _receipt(resource)
        self._ctx.log.info(
            "sent message %s to %s: %s",
            receipt.message_id,
            mask_number(args.recipient),
            receipt.status,
        )
        return receipt

    async def get_status(self, args: NotificationStatusQuery) -> NotificationReceipt:
        """Fetch a message's current status by its SID (SM... or MM...)."""
        if not _MESSAGE_SID.match(args.message_id):
            raise provider_error(
                "message_id must be a Twilio message SID (SM/MM + 32 hex)", "invalid_request"
            )
        return _receipt(await self._api.fetch_message(args.message_id))

    def _form(self, args: SendNotification) -> list[tuple[str, str]]:
        if args.kind != "sms":
            raise provider_error(f"this channel sends sms, not {args.kind!r}", "unsupported_kind")
        if not _E164.match(args.recipient):
            raise provider_error(
                f"recipient {mask_number(args.recipient)} is not an E.164 number",
                "invalid_recipient",
            )
        if args.sender is not None and not _E164.match(args.sender):
            raise provider_error(
                f"sender {mask_number(args.sender)} is not an E.164 number", "invalid_sender"
            )
        if not args.body.strip():
            raise provider_error("the message body is empty", "invalid_request")
        if len(args.body) > MAX_BODY_CHARS:
            raise provider_error(
                f"the message body exceeds {MAX_BODY_CHARS} characters", "invalid_request"
            )
        settings = self._settings
        form = [("To", args.recipient)]
        if args.sender is None and settings.messaging_service_sid is not None:
            form.append(("MessagingServiceSid", settings.messaging_service_sid))
        else:
            form.append(("From", args.sender or settings.from_number))
        form.append(("Body", args.body))
        callback = args.status_callback_url or settings.status_callback_url
        if callback is not None:
            if not callback.startswith(("https://", "http://")):
                raise provider_error(
                    "status_callback_url must be an http(s) URL", "invalid_request"
                )
            form.append(("StatusCallback", callback))
        return form


@dataclass(frozen=True, slots=True)
class StatusCallback:
    """The fields of Twilio's MessageStatus callback that corral cares about."""

    message_sid: str
    status: str
    error_code: str | None
    to: str | None
    from_: str | None


def parse_status_callback(body: bytes) -> StatusCallback:
    """Parse a form-encoded MessageStatus callback; raise ValueError if it is not one."""
    fields = dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    sid = fields.get("MessageSid") or fields.get("SmsSid")
    status = fields.get("MessageStatus") or fields.get("SmsStatus")
    if not sid or not status:
        raise ValueError("callback lacks MessageSid or MessageStatus")
    return StatusCallback(
        message_sid=sid,
        status=status,
        error_code=fields.get("ErrorCode") or None,
        to=fields.get("To") or None,
        from_=fields.get("From") or None,
    )


@plugin.category("webhook_handler")
class TwilioStatusWebhook:
    """Answer Twilio's delivery-status callbacks on the `sms-status` route."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def handle(self, request: WebhookRequest) -> WebhookResponse:
        """Parse a verified MessageStatus callback; 204 on success, 4xx when it cannot be used."""
        refusal = refuse_webhook(request, route_id=STATUS_ROUTE)
        if refusal is not None:
            return refusal
        try:
            callback = parse_status_callback(request.body)
        except (ValueError, UnicodeDecodeError):
            self._ctx.log.warning("refused a malformed %s callback", STATUS_ROUTE)
            return WebhookResponse(status=400)
        self._ctx.log.info(
            "message %s to %s is %s%s",
            callback.message_sid,
            mask_number(callback.to) if callback.to else "?",
            callback.status,
            f" (error {callback.error_code})" if callback.error_code else "",
        )
        return WebhookResponse(status=204)
