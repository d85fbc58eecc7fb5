"""Every administrative act on record: a middleware that writes one audit event per act.

A handler declares its act with `@audited("plugin.config.put")`; the middleware records the act
with the calling key, the tenant, the target (the route's `{id}` or `{key_id}`, or what the
handler sets in `request[AUDIT_TARGET]`), the outcome taken from the answer's status, the request
id, and any scalar `request[AUDIT_DETAILS]` the handler adds. Requests that never authenticated
(401, and 429 before authentication) are not acts and are not recorded: they are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, TypeVar

from aiohttp import web

from .access import Handler
from .audit import AuditLog, Outcome, Scalar
from .middleware import PRINCIPAL, TENANT, request_id_of

H = TypeVar("H")

_ATTR: Final = "__corral_audit__"
AUDIT_LOG: Final = web.AppKey("audit_log", AuditLog)
AUDIT_TARGET: Final = web.RequestKey("audit_target", str)
AUDIT_DETAILS: Final[web.RequestKey[dict[str, Scalar]]] = web.RequestKey("audit_details")
_TARGET_PARAMS: Final = ("id", "key_id", "worker_id")

_log = logging.getLogger(__name__)


def audited(action: str) -> Callable[[H], H]:
    """Declare that a handler performs an administrative act named `action`."""

    def declare(handler: H) -> H:
        setattr(handler, _ATTR, action)
        return handler

    return declare


def note(request: web.Request, target: str | None = None, **details: Scalar) -> None:
    """Add to what the audit event of this request records: its target, scalar details."""
    if target is not None:
        request[AUDIT_TARGET] = target
    merged: dict[str, Scalar] = {**request.get(AUDIT_DETAILS, {}), **details}
    request[AUDIT_DETAILS] = merged


def action_of(handler: object) -> str | None:
    """Return the act a handler declares, or None."""
    action = getattr(handler, _ATTR, None)
    return action if isinstance(action, str) else None


@web.middleware
async def audit_trail(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the act of an `@audited` route once it has been answered (errors included)."""
    action = (
        action_of(request.match_info.handler) if request.match_info.http_exception is None else None
    )
    if action is None:
        return await handler(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        await _record(request, action, status)


async def _record(request: web.Request, action: str, status: int) -> None:
    principal = request.get(PRINCIPAL)
    if principal is None:
        return  # never authenticated: not an act of anyone's
    outcome: Outcome = (
        "success" if status < 400 else "denied" if status in (403, 429) else "failure"
    )
    if status >= 500:
        outcome = "error"
    target = request.get(AUDIT_TARGET) or next(
        (request.match_info[p] for p in _TARGET_PARAMS if p in request.match_info), None
    )
    details: dict[str, Scalar] = {"status": status, **request.get(AUDIT_DETAILS, {})}
    try:
        await request.config_dict[AUDIT_LOG].record(
            action,
            outcome=outcome,
            key_id=principal.key_id,
            tenant=request.get(TENANT) or principal.tenant_id,
            target=target,
            request_id=request_id_of(request),
            details=details,
        )
    except Exception:
        _log.exception(
            "could not write the audit event %s request_id=%s", action, request_id_of(request)
        )
