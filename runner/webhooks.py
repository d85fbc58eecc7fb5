"""Inbound webhooks: `/webhook/{slug}/{tenant}/{rest}` reaches exactly that tenant's worker.

Outside API-key authentication, but rate limited per (route, tenant). Before the plugin sees a
byte: the route and method are checked, the body is bounded (413 from `Content-Length` before it
is read, or while a chunked body streams), and the signature is verified in core when the route
declares a scheme (401, audited). The worker's answer is bounded in time (504, with `$/cancel`)
and size, and its headers are filtered. Bodies, queries and payloads are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from protocol import ConnectionClosedError, Manifest, RemoteError
from protocol.categories.webhook_handler import WebhookRequest, WebhookResponse
from protocol.manifest import WebhookRoute

from .access import public
from .api_common import TENANT_RE
from .audit import AuditLog
from .http_errors import ApiError
from .install_remote import profile_from_env
from .logs import bind_log_context
from .middleware import TENANT, request_id_of
from .openapi import documented
from .ratelimit import RouteTenantLimiter
from .slot_types import UnavailableError
from .supervisor import ActivationKey, ActivationSpec, Supervisor
from .webhook_url import client_address
from .webhook_verify import (
    MemoryReplayCache,
    ReplayCache,
    RoutePolicyError,
    SignatureError,
    WebhookUrlSettings,
    check_route_policy,
    request_external_url,
    verify,
)

HANDLE_METHOD: Final = "webhook_handler.handle"
DEFAULT_RATE_PER_MINUTE: Final = 600.0
DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024
_CHUNK: Final = 64 * 1024
# Never forwarded to the plugin: credentials for other systems and per-connection headers.
_DROPPED_REQUEST_HEADERS: Final = frozenset(
    {"cookie", "proxy-authorization", "x-api-key", "connection", "keep-alive", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "proxy-connection", "host", "content-length"}
)
# Never passed back from the plugin: hop-by-hop, framing, and what only the host may set.
_DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "content-length", "content-encoding", "set-cookie"}
    | {"server", "date", "strict-transport-security", "x-request-id"}
    | {"access-control-allow-origin", "access-control-allow-credentials"}
)
NOT_FOUND: Final = "no such webhook"
# The plugin a webhook request's slug resolved to, once the router knows it (for the metrics).
WEBHOOK_PLUGIN: Final = web.RequestKey("webhook_plugin", str)

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Rate limit per (route, tenant), the cap on a plugin's answer, URL reconstruction."""

    rate_per_minute: float = DEFAULT_RATE_PER_MINUTE
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    urls: WebhookUrlSettings = field(default_factory=WebhookUrlSettings)
    profile: str = "default"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WebhookSettings:
        """Read `CORRAL_WEBHOOK_RATE_PER_MINUTE` and the public-URL settings."""
        rate = float(environ.get("CORRAL_WEBHOOK_RATE_PER_MINUTE") or DEFAULT_RATE_PER_MINUTE)
        return cls(
            rate_per_minute=rate,
            urls=WebhookUrlSettings.from_env(environ),
            profile=profile_from_env(environ),
        )


@dataclass(frozen=True, slots=True)
class _Target:
    spec: ActivationSpec
    route: WebhookRoute


class WebhookRouter:
    """Resolve, bound, verify and forward webhook requests. One per host process."""

    def __init__(
        self,
        supervisor: Supervisor,
        manifests: Mapping[str, Manifest],
        audit: AuditLog | None,
        settings: WebhookSettings | None = None,
        replay: ReplayCache | None = None,
    ) -> None:
        self.settings = settings or WebhookSettings()
        self._supervisor = supervisor
        self._manifests = manifests
        self._audit = audit
        self._limiter = RouteTenantLimiter(self.settings.rate_per_minute)
        self._replay: ReplayCache = replay or MemoryReplayCache()  # shared: `runner.pg`

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one webhook request (see the module docstring for every outcome)."""
        target = self._resolve(request)
        spec, route = target.spec, target.route
        # The access line (`runner.middleware`) is this request's one log line: it names the
        # method, path (slug, tenant, route), status and duration; the tenant and plugin go with it.
        request[TENANT] = spec.tenant_id
        bind_log_context(tenant=spec.tenant_id, plugin=spec.plugin_id)
        if request.method not in route.methods:
            raise ApiError(
                405,
                "method_not_allowed",
                f"this webhook takes {', '.join(route.methods)}",
                headers={"Allow": ", ".join(route.methods)},
            )
        self._limiter.charge(f"{spec.plugin_id}/{route.route_id}", spec.tenant_id)
        body = await _read_bounded(request, route.max_body_bytes, route.timeout_seconds)
        verified = await self._verify(request, target, body)
        forwarded = WebhookRequest(
            route_id=route.route_id,
            method=request.method,
            path=request.match_info["rest"] or "/",
            query=list(request.query.items()) if request.query_string else [],
            headers={
                name: v
                for k, v in request.headers.items()
                if (name := k.lower()) not in _DROPPED_REQUEST_HEADERS
            },
            body=body,
            client_address=client_address(request, self.settings.urls),
            verified=verified,
        )
        return await self._forward(spec, route, forwarded)

    def _resolve(self, request: web.Request) -> _Target:
        slug, tenant = request.match_info["slug"], request.match_info["tenant_id"]
        rest = request.match_info["rest"] or "/"
        if TENANT_RE.fullmatch(tenant) is None:
            raise ApiError(404, "not_found", NOT_FOUND)
        manifest = next((m for m in self._manifests.values() if slug in (m.url_slug, m.id)), None)
        spec = None
        if manifest is not None:
            request[WEBHOOK_PLUGIN] = manifest.id
            spec = self._supervisor.spec_of(ActivationKey(tenant, manifest.id))
        route = _match_route(spec.manifest, rest) if spec is not None else None
        if spec is None or route is None:
            raise ApiError(404, "not_found", NOT_FOUND)  # the same for slug, tenant and route
        return _Target(spec, route)

    async def _verify(self, request: web.Request, target: _Target, body: bytes) -> bool:
        spec, route = target.spec, target.route
        try:
            check_route_policy(route, self.settings.profile)
        except RoutePolicyError as exc:
            await self._record_refusal(request, target, "verification_required")
            raise ApiError(403, "verification_required", str(exc)) from None
        if route.verify in ("plugin", "none"):
            return False
        secret = spec.config.get(route.secret_field or "")
        url = request_external_url(request, self.settings.urls)
        try:
            await verify(
                route,
                secret if isinstance(secret, str) else None,
                method=request.method,
                url=url,
                headers=request.headers,
                body=body,
                now=time.time(),
                replay=self._replay,
                tenant_id=spec.tenant_id,
                plugin_id=spec.plugin_id,
            )
        except SignatureError as exc:
            await self._record_refusal(request, target, str(exc.reason))
            raise ApiError(401, "invalid_signature", "the signature does not verify") from None
        return True

    async def _forward(
        self, spec: ActivationSpec, route: WebhookRoute, forwarded: WebhookRequest
    ) -> web.Response:
        try:
            async with asyncio.timeout(route.timeout_seconds):
                answer: WebhookResponse = await self._supervisor.call(
                    spec.key,
                    HANDLE_METHOD,
                    forwarded,
                    timeout_s=route.timeout_seconds,
                    result_type=WebhookResponse,
                )
        except UnavailableError as exc:  # an open circuit too (CircuitOpenError)
            retry = str(max(1, round(exc.retry_after_s or 1)))
            raise ApiError(
                503, "unavailable", "the plugin is unavailable", headers={"Retry-After": retry}
            ) from None
        except TimeoutError:
            raise ApiError(504, "gateway_timeout", "the plugin did not answer in time") from None
        except ConnectionClosedError:
            raise ApiError(502, "bad_gateway", "the plugin's worker went away") from None
        except RemoteError as exc:
            _log.warning(
                "webhook %s/%s for %s: the plugin failed (%s)",
                spec.plugin_id,
                route.route_id,
                spec.tenant_id,
                exc.code,
            )
            raise ApiError(502, "bad_gateway", "the plugin failed to handle the request") from None
        return self._answer(answer)

    def _answer(self, answer: WebhookResponse) -> web.Response:
        if not 200 <= answer.status <= 599 or len(answer.body) > self.settings.max_response_bytes:
            raise ApiError(502, "bad_gateway", "the plugin's answer was not usable")
        headers = CIMultiDict(
            [
                (k, v)
                for k, v in answer.headers.items()
                if k.lower() not in _DROPPED_RESPONSE_HEADERS and "\n" not in v and "\r" not in v
            ]
        )
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    async def _record_refusal(self, request: web.Request, target: _Target, reason: str) -> None:
        spec, route = target.spec, target.route
        _log.warning(
            "webhook %s/%s for %s refused: %s (from %s)",
            spec.plugin_id,
            route.route_id,
            spec.tenant_id,
            reason,
            request.remote,
        )
        if self._audit is None:
            return
        try:
            await self._audit.record(
                "webhook.verify",
                outcome="denied",
                tenant=spec.tenant_id,
                target=f"{spec.plugin_id}/{route.route_id}",
                request_id=request_id_of(request),
                details={"reason": reason, "client": request.remote},
            )
        except Exception:
            _log.exception("could not audit a refused webhook")


def _match_route(manifest: Manifest, rest: str) -> WebhookRoute | None:
    """Return the route whose path is `rest` or a literal prefix of it at a `/` boundary."""
    for route in manifest.webhook:
        base = route.path.rstrip("/")
        if rest == route.path or rest == base or rest.startswith(base + "/"):
            return route
    return None


async def _read_bounded(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """Read the body, refusing (413) before reading when `Content-Length` says it is too big.

    A body not whole within `timeout_s` is refused (408): a slow sender holds nothing for long.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    content = request.content
    chunks: list[bytes] = []
    size = 0
    if content.is_eof():
        # The whole body arrived with the head (most callbacks are small): take it without
        # waiting, so without arming a timer.
        chunk = content.read_nowait(-1)
        if len(chunk) > limit:
            raise _too_large(limit)
        if content.at_eof():
            return chunk
        chunks.append(chunk)  # not all of it after all (a decompressing reader): read on
        size = len(chunk)
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await content.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "request_timeout", "the body did not arrive in time") from None
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"this webhook takes at most {limit} bytes")


WEBHOOKS: Final = web.AppKey("webhooks", WebhookRouter)
WEBHOOK_PATH: Final = "/webhook/{slug}/{tenant_id}{rest:(/.*)?}"
WEBHOOK_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")


@public
@documented(
    "A provider's callback, routed to that tenant's worker",
    responses={200: None, 204: None},
    errors=[401, 403, 404, 405, 408, 413, 429, 502, 503, 504],
    tag="webhooks",
    description="`slug` is the plugin's manifest slug (or its id), `tenant_id` a tenant or "
    "`global`, and the rest of the path matches one of the plugin's `[[webhook]]` paths. The "
    "plugin chooses its answer's status; the errors listed are the host's.",
)
async def webhook(request: web.Request) -> web.StreamResponse:
    """Any method on /webhook/{slug}/{tenant_id}/{rest}."""
    return await request.app[WEBHOOKS].handle(request)


def add_routes(app: web.Application) -> None:
    """Add the webhook routes to `app` (the router must be at `app[WEBHOOKS]`)."""
    for method in WEBHOOK_METHODS:
        app.router.add_route(method, WEBHOOK_PATH, webhook)
