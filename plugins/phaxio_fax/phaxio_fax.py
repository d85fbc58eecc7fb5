"""Phaxio fax: send, follow and cancel faxes through Phaxio's v2.1 API, and read its status
callbacks.

The worker has no network: every request goes through the host's `http.request` (`ctx.http`),
which enforces the manifest's egress grant; multipart bodies are built here with the stdlib.
Core verifies the callback's HMAC-SHA256 signature before `handle` runs. Documents, full phone
numbers and secrets are never logged.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from plugins.sdk import (
    Context,
    FaxJob,
    FaxQuery,
    HttpResponse,
    Plugin,
    PluginError,
    RemoteError,
    SendFax,
    WebhookRequest,
    WebhookResponse,
)
from plugins.sdk.providers import (
    ConfigError,
    FilePart,
    basic_auth,
    encode_multipart,
    mask_number,
    provider_error,
    redact_numbers,
    refuse_webhook,
)

plugin = Plugin()

API_BASE: Final = "https://api.phaxio.com/v2.1"
USER_AGENT: Final = "corral-phaxio-fax/1.0.0"
REQUEST_TIMEOUT_S: Final = 15.0
UPLOAD_TIMEOUT_S: Final = 60.0
MAX_HEADER_TEXT_CHARS: Final = 50  # Phaxio's limit for the page header line
STATUS_ROUTE: Final = "fax-status"
RETRYABLE_HOST_CODES: Final = frozenset({"timeout"})

# Phaxio's fax and recipient statuses onto corral's: queued, in_progress, success, failed,
# cancelled. A fax goes to one recipient here, so a partial success is a failure to deliver.
STATUS_MAP: Final[Mapping[str, str]] = {
    "queued": "queued",
    "pendingbatch": "queued",
    "inprogress": "in_progress",
    "ringing": "in_progress",
    "callactive": "in_progress",
    "willretry": "in_progress",
    "success": "success",
    "failure": "failed",
    "partialsuccess": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
UNKNOWN_STATUS: Final = "in_progress"  # not terminal: the caller keeps asking

_E164: Final = re.compile(r"^\+[1-9]\d{1,14}$")
_FAX_ID: Final = re.compile(r"^[0-9]{1,20}$")
_TAG_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MEDIA_TYPE: Final = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
_UNSAFE_FILENAME: Final = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class PhaxioSettings:
    """One tenant's validated Phaxio config (the callback token is core's business)."""

    api_key: str
    api_secret: str = field(repr=False)
    caller_id: str | None = None
    callback_url: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PhaxioSettings:
        """Validate the plugin's config subtree; raise ConfigError naming the first bad field."""
        values: dict[str, str | None] = {}
        for name in ("api_key", "api_secret", "caller_id", "callback_url"):
            value = config.get(name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"config field {name!r} must be a string")
            values[name] = value or None
        api_key, api_secret = values["api_key"], values["api_secret"]
        caller_id, callback_url = values["caller_id"], values["callback_url"]
        if api_key is None or api_secret is None:
            raise ConfigError("config fields 'api_key' and 'api_secret' are required")
        if caller_id is not None and not _E164.match(caller_id):
            raise ConfigError("config field 'caller_id' must be an E.164 number like +15551234567")
        if callback_url is not None and not callback_url.startswith(("https://", "http://")):
            raise ConfigError("config field 'callback_url' must be an http(s) URL")
        return cls(api_key, api_secret, caller_id, callback_url)


def _error_from_response(response: HttpResponse, body: Any) -> PluginError:
    """Map a failed Phaxio answer (non-2xx, or `success: false`) to a PluginError."""
    status = response.status
    if not isinstance(body, dict):
        return provider_error(
            f"Phaxio answered HTTP {status} without a JSON body",
            "provider_error",
            retryable=status >= 500,
            http_status=status,
        )
    text = redact_numbers(str(body.get("message") or "no message"))
    code, retryable = _classify(status, text)
    retry_after = response.header("Retry-After")
    return provider_error(
        f"Phaxio refused the request (HTTP {status}): {text}",
        code,
        retryable=retryable,
        http_status=status,
        retry_after_s=int(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _classify(status: int, message: str) -> tuple[str, bool]:
    # Phaxio's errors carry only an HTTP status and a message; no numeric code to go by.
    if status == 429:
        return "rate_limited", True
    if status >= 500:
        return "provider_error", True
    if status in (401, 403):
        return "auth_failed", False
    if status == 402:
        return "insufficient_funds", False
    if status == 404:
        return "not_found", False
    if status in (400, 422):
        if "number" in message.lower():
            return "invalid_recipient", False
        return "invalid_request", False
    return "provider_error", False


def job_from_data(data: Mapping[str, Any], job_id: str | None = None) -> FaxJob:
    """Build a FaxJob from Phaxio's `data` object (a fax resource or a callback's `fax`)."""
    raw_id = data.get("id", job_id)
    if not isinstance(raw_id, int | str) or not str(raw_id):
        raise provider_error("Phaxio's answer lacks a fax id", "provider_error")
    provider_status = data.get("status")
    provider_status = provider_status if isinstance(provider_status, str) else None
    pages = data.get("num_pages")
    error = dict(data)
    recipients = data.get("recipients")
    if data.get("error_type") is None and isinstance(recipients, list) and recipients:
        first = recipients[0]
        error = first if isinstance(first, dict) else error
    error_code = error.get("error_type") or error.get("error_id")
    error_message = error.get("error_message")
    return FaxJob(
        job_id=str(raw_id),
        status=_status(provider_status),
        provider_status=provider_status,
        pages=pages if isinstance(pages, int) and not isinstance(pages, bool) else None,
        error_code=None if error_code is None else str(error_code),
        error_message=None if error_message is None else redact_numbers(str(error_message)),
    )


def _status(provider_status: str | None) -> str:
    if provider_status is None:
        return "queued"  # a fax Phaxio just accepted has no status yet
    return STATUS_MAP.get(provider_status.lower(), UNKNOWN_STATUS)


class PhaxioApi:
    """Phaxio's faxes resource over the host's `http.request`."""

    def __init__(self, ctx: Context, settings: PhaxioSettings) -> None:
        self._ctx = ctx
        self._authorization = basic_auth(settings.api_key, settings.api_secret)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Make one API call; return the answer's `data` object ({} when it has none)."""
        headers = {
            "Authorization": self._authorization,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            response = await self._ctx.http.request(
                method, f"{API_BASE}{path}", headers=headers, body=body, timeout_s=timeout_s
            )
        except RemoteError as exc:
            # egress_denied, unavailable, timeout: keep the host's code so core can tell them apart.
            raise RemoteError(
                exc.code,
                f"Phaxio request not completed: {exc.message}",
                {"code": exc.code, "retryable": exc.code in RETRYABLE_HOST_CODES},
            ) from exc
        try:
            answer = json.loads(response.body)
        except ValueError:
            answer = None
        if not 200 <= response.status < 300 or not isinstance(answer, dict):
            raise _error_from_response(response, answer)
        if answer.get("success") is not True:
            reason = redact_numbers(str(answer.get("message") or "no message"))
            raise provider_error(
                f"Phaxio reported failure: {reason}",
                "provider_error",
                http_status=response.status,
            )
        data = answer.get("data")
        return data if isinstance(data, dict) else {}


@plugin.category("outbound_fax")
class PhaxioFax:
    """Send faxes through Phaxio; `status` is corral's word, `provider_status` Phaxio's."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._settings = PhaxioSettings.from_config(ctx.config)
        self._api = PhaxioApi(ctx, self._settings)

    async def send_fax(self, args: SendFax) -> FaxJob:
        """Queue a fax; raise PluginError before any HTTP when the request is malformed."""
        fields, files = self._parts(args)
        content_type, body = encode_multipart(fields, files)
        data = await self._api.call(
            "POST", "/faxes", body=body, content_type=content_type, timeout_s=UPLOAD_TIMEOUT_S
        )
        job = job_from_data(data)
        self._ctx.log.info("queued fax %s to %s", job.job_id, mask_number(args.to))
        return job

    async def get_status(self, args: FaxQuery) -> FaxJob:
        """Fetch a fax's current state by its Phaxio id."""
        job_id = _checked_id(args.job_id)
        return job_from_data(await self._api.call("GET", f"/faxes/{job_id}"), job_id)

    async def cancel_fax(self, args: FaxQuery) -> FaxJob:
        """Cancel a fax that has not finished; Phaxio refuses (as a PluginError) once it has."""
        job_id = _checked_id(args.job_id)
        data = await self._api.call("POST", f"/faxes/{job_id}/cancel")
        job = job_from_data(data, job_id)
        if job.provider_status is None:  # Phaxio confirms a cancel without restating the status
            job = FaxJob(job_id=job.job_id, status="cancelled")
        self._ctx.log.info("cancelled fax %s", job.job_id)
        return job

    def _parts(self, args: SendFax) -> tuple[list[tuple[str, str]], list[FilePart]]:
        if not _E164.match(args.to):
            raise provider_error(
                f"fax number {mask_number(args.to)} is not E.164", "invalid_recipient"
            )
        if (args.document is None) == (args.content_url is None):
            raise provider_error("give exactly one of document or content_url", "invalid_request")
        fields = [("to", args.to)]
        files: list[FilePart] = []
        if args.document is not None:
            if not args.document:
                raise provider_error("the document is empty", "invalid_request")
            if not _MEDIA_TYPE.match(args.content_type):
                raise provider_error("content_type is not a media type", "invalid_request")
            filename = _UNSAFE_FILENAME.sub("_", args.filename)[:100] or "document"
            files.append(FilePart("file", filename, args.content_type, args.document))
        elif args.content_url is not None:
            if not args.content_url.startswith(("https://", "http://")):
                raise provider_error("content_url must be an http(s) URL", "invalid_request")
            fields.append(("content_url", args.content_url))
        caller_id = args.caller_id or self._settings.caller_id
        if caller_id is not None:
            if not _E164.match(caller_id):
                raise provider_error(
                    f"caller id {mask_number(caller_id)} is not E.164", "invalid_sender"
                )
            fields.append(("caller_id", caller_id))
        if args.header_text is not None:
            text = args.header_text
            if len(text) > MAX_HEADER_TEXT_CHARS or not text.isprintable():
                raise provider_error(
                    f"header_text must be at most {MAX_HEADER_TEXT_CHARS} printable characters",
                    "invalid_request",
                )
            fields.append(("header_text", text))
        if self._settings.callback_url is not None:
            fields.append(("callback_url", self._settings.callback_url))
        for name, value in sorted(args.tags.items()):
            if not _TAG_NAME.match(name):
                raise provider_error(
                    f"tag name {name!r} must match {_TAG_NAME.pattern}", "invalid_request"
                )
            fields.append((f"tags[{name}]", value))
        return fields, files


def _checked_id(job_id: str) -> str:
    if not _FAX_ID.match(job_id):
        raise provider_error("job_id must be a Phaxio fax id (digits)", "invalid_request")
    return job_id


def callback_fields(content_type: str, body: bytes) -> dict[str, Any]:
    """Return a status callback's fields: form-encoded, multipart or JSON; raise ValueError."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        decoded = json.loads(body)
        if not isinstance(decoded, dict):
            raise ValueError("JSON callback is not an object")
        return decoded
    if media_type == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = payload.decode("utf-8")
        return fields
    return dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def parse_status_callback(content_type: str, body: bytes) -> FaxJob:
    """Parse Phaxio's fax status callback (its `fax` field, JSON) into a FaxJob."""
    fields = callback_fields(content_type, body)
    fax = fields.get("fax", fields if "id" in fields else None)
    if isinstance(fax, str):
        fax = json.loads(fax)
    if not isinstance(fax, dict):
        raise ValueError("callback carries no fax object")
    return job_from_data(fax)


@plugin.category("webhook_handler")
class PhaxioStatusWebhook:
    """Answer Phaxio's fax status callbacks on the `fax-status` route."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def handle(self, request: WebhookRequest) -> WebhookResponse:
        """Parse a verified status callback and acknowledge it; 4xx when it cannot be used.

        The 200 carries a JSON acknowledgement: the fax id, corral's status, and the tenant whose
        worker took it (the tenant is in the URL already; a provider's delivery log then shows
        which activation answered). Nothing from the callback beyond the id and status goes back.
        """
        refusal = refuse_webhook(request, route_id=STATUS_ROUTE)
        if refusal is not None:
            return refusal
        content_type = next(
            (v for k, v in request.headers.items() if k.lower() == "content-type"), ""
        )
        try:
            job = parse_status_callback(content_type, request.body)
        except (ValueError, PluginError):  # JSON and UTF-8 decode errors are ValueErrors
            self._ctx.log.warning("refused a malformed %s callback", STATUS_ROUTE)
            return WebhookResponse(status=400)
        self._ctx.log.info(
            "fax %s is %s (%s)", job.job_id, job.status, job.provider_status or "no status"
        )
        ack = {"fax_id": job.job_id, "status": job.status, "tenant": self._ctx.tenant_id}
        return WebhookResponse(
            status=200, headers={"Content-Type": "application/json"}, body=json.dumps(ack).encode()
        )
