"""Helpers for plugins that call HTTP providers: masking, error data, basic auth, request bodies.

Everything here is pure (no I/O); requests themselves go through `ctx.http`.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from protocol.categories.webhook_handler import WebhookRequest, WebhookResponse

from .errors import PluginError

_log = logging.getLogger("plugins.sdk.providers")

_PHONE_IN_TEXT: Final = re.compile(r"(?<!\w)\+?\d{7,15}(?!\w)")


class ConfigError(PluginError):
    """The tenant's config cannot drive this plugin; the message names the field, never a value.

    Raised while the plugin starts, it fails the worker's start with this message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, {"code": "invalid_config"})


def mask_number(number: str) -> str:
    """Return a phone number with its middle digits hidden: +15551234567 -> +1555***4567."""
    if len(number) <= 8:
        return number[:2] + "***"
    return f"{number[:5]}***{number[-4:]}"


def redact_numbers(text: str) -> str:
    """Mask every phone-number-like run of digits in `text` (provider messages quote them)."""
    return _PHONE_IN_TEXT.sub(lambda m: mask_number(m.group()), text)


def provider_error(
    message: str, code: str, *, retryable: bool = False, **extra: Any
) -> PluginError:
    """Return a PluginError whose data is `{"code", "retryable", **extra}` (None extras dropped).

    `code` is stable and machine-readable (invalid_recipient, auth_failed, rate_limited, ...).
    """
    data: dict[str, Any] = {"code": code, "retryable": retryable}
    data.update({k: v for k, v in extra.items() if v is not None})
    return PluginError(message, data)


def basic_auth(user: str, password: str) -> str:
    """Return an HTTP `Authorization` value for basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass(frozen=True, slots=True)
class FilePart:
    """One file field of a multipart body."""

    name: str
    filename: str
    content_type: str
    data: bytes


def encode_multipart(fields: list[tuple[str, str]], files: list[FilePart]) -> tuple[str, bytes]:
    """Return (content type, body) of a multipart/form-data request (RFC 7578).

    Names, filenames and content types must already be safe (no quotes or line breaks).
    """
    contents = [value.encode() for _, value in fields] + [f.data for f in files]
    boundary = "corral-" + secrets.token_hex(16)
    while any(boundary.encode() in chunk for chunk in contents):  # vanishingly rare
        boundary = "corral-" + secrets.token_hex(16)
    out: list[bytes] = []
    for name, value in fields:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        )
        out.append(value.encode() + b"\r\n")
    for f in files:
        out.append(
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{f.name}"; filename="{f.filename}"\r\n'
            f"Content-Type: {f.content_type}\r\n\r\n".encode()
        )
        out.append(f.data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(out)


def refuse_webhook(
    request: WebhookRequest, *, route_id: str, method: str = "POST"
) -> WebhookResponse | None:
    """Return the answer for a request this handler must not process, or None to go on.

    404 for another route, 405 (with `Allow`) for another method, and 401 when core did not verify
    the signature: every shipped route declares core verification, so an unverified request means
    it was skipped, and a provider's signature often covers what only core knows (the public URL).
    """
    if request.route_id != route_id:
        return WebhookResponse(status=404)
    if request.method.upper() != method:
        return WebhookResponse(status=405, headers={"Allow": method})
    if not request.verified:
        _log.warning("refused an unverified %s callback", route_id)
        return WebhookResponse(status=401)
    return None
