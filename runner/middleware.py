"""The admin API's middlewares: request id and access log, error mapping, authentication.

`install_middlewares(app, keys)` adds them outermost first. Handlers then find the request id at
`request[REQUEST_ID]`, the calling key at `request[PRINCIPAL]` and the tenant the request acts
on at `request[TENANT]`. Log lines carry ids, never keys, headers or bodies.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from .access import Handler, access_of, undeclared_routes
from .auth import (
    ApiKeys,
    AuthenticationError,
    Principal,
    check_scopes,
    check_tenant,
    presented_key,
)
from .errors import RunnerError
from .http_errors import classify, error_response
from .logs import bind_log_context, reset_log_context, set_log_context
from .ratelimit import AdminRateLimits, RateLimitSettings

REQUEST_ID_HEADER: Final = "X-Request-ID"
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
CLIENT_CLOSED: Final = 499  # only ever logged: nobody is left to answer
_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")

REQUEST_ID: Final = web.RequestKey("request_id", str)
PRINCIPAL: Final = web.RequestKey("principal", Principal)
TENANT: Final[web.RequestKey[str | None]] = web.RequestKey("tenant")

ClientAddress = Callable[[web.Request], str | None]

_log = logging.getLogger(__name__)


class UndeclaredRouteError(RunnerError):
    """A route declares no access rule (a bug); `routes` lists `METHOD path` of each."""

    def __init__(self, routes: list[str]) -> None:
        super().__init__(f"routes without @requires or @public: {', '.join(routes)}")
        self.routes = routes


@dataclass(frozen=True)
class _AuthState:
    keys: ApiKeys
    limits: AdminRateLimits
    client_address: ClientAddress


_AUTH_STATE: Final = web.AppKey("auth_state", _AuthState)


def peer_address(request: web.Request) -> str | None:
    """Return the TCP peer's address (behind a proxy: the proxy's)."""
    return request.remote


def install_middlewares(
    app: web.Application,
    keys: ApiKeys,
    *,
    limits: AdminRateLimits | None = None,
    client_address: ClientAddress = peer_address,
    around_errors: Sequence[Middleware] = (),
) -> None:
    """Add request id, error mapping and authentication to `app`, before it is frozen.

    `limits` defaults to `RateLimitSettings()` on the loop's clock. `client_address` says
    whom failed authentication is charged to. At start-up the app refuses to run if any
    route declares neither `@requires` nor `@public` (`UndeclaredRouteError`).
    `around_errors` run inside the request context and outside the error mapping, so they see
    every answer's final status (the audit trail).
    """
    app[_AUTH_STATE] = _AuthState(
        keys, limits or AdminRateLimits(RateLimitSettings()), client_address
    )
    app.middlewares.extend([request_context, *around_errors, error_mapping, authentication])
    app.on_response_prepare.append(_echo_request_id)
    app.on_startup.append(_check_routes)


def rate_limits_of(app: web.Application) -> AdminRateLimits:
    """Return the admin API's rate limits (after `install_middlewares`), for metrics."""
    return app[_AUTH_STATE].limits


def request_id_of(request: web.Request) -> str:
    """Return the request's id (after `request_context` ran; else a placeholder)."""
    request_id: str = request.get(REQUEST_ID, "-")
    return request_id


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (a sane `X-Request-ID`, else a new one) and log its outcome."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    is_sane = _REQUEST_ID_RE.fullmatch(incoming) is not None
    request[REQUEST_ID] = incoming if is_sane else secrets.token_hex(16)  # uuid4: 4x slower
    context = set_log_context(request_id=request[REQUEST_ID], tenant=None, plugin=None)
    loop = asyncio.get_running_loop()
    started, status = loop.time(), 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # 2xx and 3xx only: errors were answered inside
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        _log_access(request, status, (loop.time() - started) * 1000.0)
        reset_log_context(context)


@web.middleware
async def error_mapping(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error raised inside with the JSON error shape (see `runner.http_errors`)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = classify(exc)
    except Exception as exc:
        answer = classify(exc)
        if answer.is_bug:
            _log.error(
                "unhandled error in %s %s request_id=%s",
                request.method,
                request.rel_url.raw_path,
                request_id_of(request),
                exc_info=exc,
            )
    return error_response(answer, request_id_of(request))


@web.middleware
async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, charge the key's budget, and check the route's scopes and tenant rule."""
    if request.match_info.http_exception is not None:
        return await handler(request)  # the router's own 404 or 405
    access = access_of(request.match_info.handler)
    if access is None:
        raise UndeclaredRouteError([f"{request.method} {request.match_info.route.resource}"])
    if access.tenant is None:
        return await handler(request)
    state = request.config_dict[_AUTH_STATE]
    principal = await _authenticate(request, state)
    state.limits.charge_key(principal.key_id, is_write=request.method not in READ_METHODS)
    check_scopes(principal, access.scopes)
    tenant = await access.tenant.target(request, principal)
    check_tenant(principal, tenant)
    request[TENANT] = tenant
    bind_log_context(tenant=tenant)
    return await handler(request)


async def _authenticate(request: web.Request, state: _AuthState) -> Principal:
    address = state.client_address(request)
    state.limits.check_address(address)
    try:
        principal = await state.keys.authenticate(presented_key(request.headers))
    except AuthenticationError as exc:
        if exc.reason == "invalid":
            state.limits.record_failure(address)
        _log.info(
            "authentication failed (%s) key_id=%s address=%s request_id=%s",
            exc.detail,
            exc.key_id or "-",
            address,
            request_id_of(request),
        )
        raise
    request[PRINCIPAL] = principal
    return principal


def _log_access(request: web.Request, status: int, duration_ms: float) -> None:
    principal = request.get(PRINCIPAL)
    tenant = request.get(TENANT, principal.tenant_id if principal else None)
    _log.info(
        "%s %s %d request_id=%s key_id=%s tenant=%s duration_ms=%.1f",
        request.method,
        request.rel_url.raw_path,  # still percent-encoded: no line breaks; no query string
        status,
        request_id_of(request),
        principal.key_id if principal else "-",
        tenant or "-",
        duration_ms,
    )


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


async def _check_routes(app: web.Application) -> None:
    missing = undeclared_routes(app)
    if missing:
        raise UndeclaredRouteError(missing)
