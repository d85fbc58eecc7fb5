"""The signature schemes a webhook route may declare: how each reads its headers, what it signs,
and what it yields for replay protection.

Each check is synchronous and pure (the caller may run it on a thread); `webhook_verify` chooses
the scheme, records nonces and enforces policy. Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from protocol.manifest import WebhookRoute

from .webhook_errors import SignatureError, SignatureReason

FormInput = Mapping[str, str] | Sequence[tuple[str, str]]

DEFAULT_HEADERS: Final[Mapping[str, str]] = {
    "hmac-sha256": "X-Signature",
    "hmac-sha1": "X-Signature",
    "twilio": "X-Twilio-Signature",
    "stripe": "Stripe-Signature",
    "standard-webhooks": "webhook-signature",
}
MAX_MESSAGE_ID_CHARS: Final = 256
MAX_SIGNATURES: Final = 16
_FORM_TYPE: Final = "application/x-www-form-urlencoded"
_HEX: Final = re.compile(r"[0-9a-fA-F]+")
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a scheme may look at: the request as received, and the URL the provider signed."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    form: FormInput | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a scheme established about a request whose signature it accepted."""

    timestamp: int | None = None
    message_id: str | None = None
    nonce: str | None = None  # what the replay cache records; None: the scheme has no nonce


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Return every value of header `name` (case-insensitive), from a dict or a multidict."""
    getall = getattr(headers, "getall", None)
    if callable(getall):
        values = getall(name, [])
        return [str(v) for v in values]
    lowered = name.lower()
    return [v for k, v in headers.items() if k.lower() == lowered]


def _one_header(headers: Mapping[str, str], name: str) -> str | None:
    values = header_values(headers, name)
    if len(values) > 1:
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail=f"{name} is repeated")
    return values[0].strip() if values else None


def _required_header(headers: Mapping[str, str], name: str) -> str:
    value = _one_header(headers, name)
    if not value:
        raise SignatureError(SignatureReason.MISSING_SIGNATURE, detail=f"no {name} header")
    return value


def _header_name(route: WebhookRoute) -> str:
    return route.signature_header or DEFAULT_HEADERS[route.verify]


def _matches(expected: bytes, candidates: Sequence[bytes]) -> bool:
    # Compare against every candidate, so the time taken does not say which one matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(expected, candidate)
    return found


def _decode_hex(text: str, size: int) -> bytes:
    if len(text) != 2 * size or not _HEX.fullmatch(text):
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="not a hex digest")
    return bytes.fromhex(text)


def _decode_base64(text: str, size: int) -> bytes:
    raw = _try_base64(text, size)
    if raw is None:
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="not a base64 digest")
    return raw


def _try_base64(text: str, size: int) -> bytes | None:
    """Return the `size` bytes `text` encodes (standard or URL-safe, padding optional), or None."""
    text = text.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        return None
    return raw if len(raw) == size else None


def _check_timestamp(text: str, now: float, tolerance_s: int) -> int:
    if not _TIMESTAMP.fullmatch(text):
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="bad timestamp")
    timestamp = int(text)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(SignatureReason.STALE_TIMESTAMP)
    return timestamp


def _check_body_hmac(
    route: WebhookRoute, secret: str, request: SignedRequest, now: float
) -> Accepted:
    """hmac-sha256 / hmac-sha1: a MAC of the raw body, hex or base64, optionally `sha256=`."""
    digest = hashlib.sha256 if route.verify == "hmac-sha256" else hashlib.sha1
    prefix = "sha256=" if route.verify == "hmac-sha256" else "sha1="
    value = _required_header(request.headers, _header_name(route))
    if value[: len(prefix)].lower() == prefix:
        value = value[len(prefix) :]
    expected = hmac.new(secret.encode(), request.body, digest).digest()
    if route.signature_encoding == "hex":
        provided = _decode_hex(value, len(expected))
    else:
        provided = _decode_base64(value, len(expected))
    if not hmac.compare_digest(expected, provided):
        raise SignatureError(SignatureReason.BAD_SIGNATURE)
    return Accepted()


def _check_twilio(route: WebhookRoute, secret: str, request: SignedRequest, now: float) -> Accepted:
    """base64 HMAC-SHA1 over the URL, then each form field's name and value sorted by name.

    A non-form body must be covered by the URL's `bodySHA256` query parameter (Twilio's scheme
    for JSON bodies); a body the signature would not cover is refused.
    """
    provided = _decode_base64(_required_header(request.headers, _header_name(route)), 20)
    query = parse_qsl(urlsplit(request.url).query, keep_blank_values=True)
    body_hashes = [value for name, value in query if name == "bodySHA256"]
    if body_hashes:
        if len(body_hashes) > 1:
            raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="bodySHA256 repeated")
        actual = hashlib.sha256(request.body).hexdigest().encode()
        if not hmac.compare_digest(actual, body_hashes[0].lower().encode()):
            raise SignatureError(SignatureReason.BAD_SIGNATURE)
        params = ""
    else:
        fields = _form_fields(request)
        if fields is None and request.body:
            raise SignatureError(SignatureReason.BAD_SIGNATURE, detail="body not signed")
        params = _twilio_params(fields or [])
    key = secret.encode()
    expected = [
        hmac.new(key, (url + params).encode(), hashlib.sha1).digest()
        for url in _port_variants(request.url)
    ]
    if not _matches(provided, expected):
        raise SignatureError(SignatureReason.BAD_SIGNATURE)
    return Accepted()


def _form_fields(request: SignedRequest) -> list[tuple[str, str]] | None:
    if request.form is not None:
        if isinstance(request.form, Mapping):
            return list(request.form.items())
        return list(request.form)
    content_type = _one_header(request.headers, "Content-Type") or ""
    if content_type.split(";", 1)[0].strip().lower() != _FORM_TYPE:
        return None
    try:
        return parse_qsl(request.body.decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise SignatureError(SignatureReason.BAD_SIGNATURE, detail="body not UTF-8") from None


def _twilio_params(fields: Sequence[tuple[str, str]]) -> str:
    # Twilio's own validators sort names, and each name's distinct values, by code point.
    grouped: dict[str, set[str]] = {}
    for name, value in fields:
        grouped.setdefault(name, set()).add(value)
    return "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))


def _port_variants(url: str) -> list[str]:
    """Return `url` as sent, without its port and with the default port (Twilio signs either)."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname
    if host is None or default is None:
        return [url]
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    userinfo = userinfo + "@" if userinfo else ""
    without = urlunsplit(parts._replace(netloc=f"{userinfo}{host}"))
    with_port = urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{parts.port or default}"))
    return list(dict.fromkeys([url, without, with_port]))


def _check_stripe(route: WebhookRoute, secret: str, request: SignedRequest, now: float) -> Accepted:
    """`t=<unix>,v1=<hex>[,v1=...]`: hex HMAC-SHA256 of `{t}.{body}`; any v1 may match."""
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in _required_header(request.headers, _header_name(route)).split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(SignatureReason.MALFORMED_SIGNATURE)
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not signatures or len(signatures) > MAX_SIGNATURES:
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE)
    if not _TIMESTAMP.fullmatch(timestamps[0]):
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="bad timestamp")
    signed = timestamps[0].encode() + b"." + request.body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    provided = [bytes.fromhex(s) for s in signatures if len(s) == 64 and _HEX.fullmatch(s)]
    if not provided:
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="no v1 hex digest")
    if not _matches(expected, provided):
        raise SignatureError(SignatureReason.BAD_SIGNATURE)
    timestamp = _check_timestamp(timestamps[0], now, route.tolerance_seconds)
    return Accepted(timestamp=timestamp, nonce=f"{timestamp}.{expected.hex()}")


def _check_standard(
    route: WebhookRoute, secret: str, request: SignedRequest, now: float
) -> Accepted:
    """Standard Webhooks: base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, `v1,` entries.

    The headers are `webhook-id`, `webhook-timestamp` and `webhook-signature`; Svix's `svix-*`
    spelling is accepted when the `webhook-*` one is absent. `signature_header` is not used.
    """
    svix = not header_values(request.headers, "webhook-signature") and bool(
        header_values(request.headers, "svix-signature")
    )
    prefix = "svix-" if svix else "webhook-"
    signatures = _required_header(request.headers, prefix + "signature").split()
    message_id = _required_header(request.headers, prefix + "id")
    timestamp_text = _required_header(request.headers, prefix + "timestamp")
    if len(message_id) > MAX_MESSAGE_ID_CHARS or len(signatures) > MAX_SIGNATURES:
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE)
    if not _TIMESTAMP.fullmatch(timestamp_text):
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="bad timestamp")
    entries = [s.partition(",") for s in signatures]
    provided = [d for v, _, b64 in entries if v == "v1" and (d := _try_base64(b64, 32))]
    if not provided:
        raise SignatureError(SignatureReason.MALFORMED_SIGNATURE, detail="no v1 signature")
    signed = f"{message_id}.{timestamp_text}.".encode() + request.body
    expected = hmac.new(_standard_key(secret), signed, hashlib.sha256).digest()
    if not _matches(expected, provided):
        raise SignatureError(SignatureReason.BAD_SIGNATURE)
    timestamp = _check_timestamp(timestamp_text, now, route.tolerance_seconds)
    return Accepted(timestamp=timestamp, message_id=message_id, nonce=message_id)


def _standard_key(secret: str) -> bytes:
    """Return the key of a `whsec_<base64>` secret, or of any other secret its UTF-8 bytes."""
    if not secret.startswith("whsec_"):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        key = b""
    if not key:
        raise SignatureError(SignatureReason.MISSING_SECRET, detail="whsec_ secret is not base64")
    return key


SchemeCheck = Callable[[WebhookRoute, str, SignedRequest, float], Accepted]
SCHEMES: Final[Mapping[str, SchemeCheck]] = {
    "hmac-sha256": _check_body_hmac,
    "hmac-sha1": _check_body_hmac,
    "twilio": _check_twilio,
    "stripe": _check_stripe,
    "standard-webhooks": _check_standard,
}
