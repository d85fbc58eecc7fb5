"""Core's check of an inbound webhook's signature, per the route's `verify` scheme, before any
plugin sees the request; and the policy on which schemes a deployment profile allows.

Routing, size limits and HTTP answers belong to the webhook router; the URL the provider signed
comes from `webhook_url.external_url`; the schemes are `webhook_schemes`'s and remembering nonces
is `replay_cache`'s. Secrets and received signatures never appear in an error or a log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from protocol.manifest import Verify, WebhookRoute

from .install_remote import HIPAA_PROFILE
from .replay_cache import MemoryReplayCache, ReplayCache, ReplayKey
from .webhook_errors import RoutePolicyError, SignatureError, SignatureReason
from .webhook_schemes import SCHEMES, FormInput, SignedRequest
from .webhook_url import (
    WebhookUrlSettings,
    WebhookUrlSettingsError,
    external_url,
    request_external_url,
)

# The router needs only this module: the feature's public names are re-exported here.
__all__ = [
    "OFFLOAD_BODY_BYTES",
    "FormInput",
    "MemoryReplayCache",
    "ReplayCache",
    "ReplayKey",
    "RoutePolicyError",
    "SignatureError",
    "SignatureReason",
    "Verified",
    "WebhookUrlSettings",
    "WebhookUrlSettingsError",
    "check_route_policy",
    "external_url",
    "request_external_url",
    "verify",
]

# Past this size the MAC is computed on a worker thread, so that the loop never stalls on it.
OFFLOAD_BODY_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of `verify` for a request it accepted.

    `verified` is True when core checked a signature (it becomes `WebhookRequest.verified`);
    False for `plugin` and `none`, which core passes through unchecked. `timestamp` is the signed
    Unix time and `message_id` the provider's delivery id, when the scheme carries them.
    """

    scheme: Verify
    verified: bool
    timestamp: int | None = None
    message_id: str | None = None


def check_route_policy(route: WebhookRoute, profile: str) -> None:
    """Raise `RoutePolicyError` if `profile` forbids the route's scheme; call it at mount time.

    Under the HIPAA profile (`CORRAL_PROFILE=hipaa`) a route may not declare `verify = "none"`.
    """
    if profile == HIPAA_PROFILE and route.verify == "none":
        raise RoutePolicyError(route.route_id, route.verify, profile)


async def verify(
    route: WebhookRoute,
    secret: str | None,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    replay: ReplayCache,
    tenant_id: str,
    plugin_id: str,
    form: FormInput | None = None,
) -> Verified:
    """Check the request's signature under `route.verify`; return what was verified.

    `secret` is the tenant's value of `route.secret_field`. `url` is the URL the provider signed
    (see `webhook_url.external_url`); only `twilio` uses it. `headers` may be a plain mapping or
    a case-insensitive multidict (duplicated signature headers are refused). `form` is the parsed
    form body, for `twilio` only; when None, a form-encoded body is parsed here. `now` is Unix
    time (`time.time()`): provider timestamps are wall-clock times. `tenant_id` and `plugin_id`
    scope the nonces recorded in `replay`.

    Raise `SignatureError`; a nonce is recorded only once the signature and timestamp passed,
    so forged requests cannot fill the cache.
    """
    if route.verify in ("plugin", "none"):
        return Verified(route.verify, verified=False)
    if not secret:
        raise SignatureError(SignatureReason.MISSING_SECRET, route.route_id)
    check = SCHEMES[route.verify]
    request = SignedRequest(method.upper(), url, headers, body, form)
    try:
        if len(body) > OFFLOAD_BODY_BYTES:
            accepted = await asyncio.to_thread(check, route, secret, request, now)
        else:
            accepted = check(route, secret, request, now)
    except SignatureError as exc:
        exc.route_id = route.route_id
        raise
    if accepted.nonce is not None and accepted.timestamp is not None:
        key = (tenant_id, plugin_id, route.route_id, accepted.nonce)
        expires_at = float(accepted.timestamp + route.tolerance_seconds)
        if not await replay.claim(key, expires_at=expires_at, now=now):
            raise SignatureError(SignatureReason.REPLAYED, route.route_id)
    return Verified(route.verify, True, accepted.timestamp, accepted.message_id)
