"""The aiohttp application: the admin API's routes behind its middlewares.

`build_app` composes what `runner.service` opened (control, keys, registry, audit log) with the
routes of `api_plugins`, `api_admin` and `api_ops`. Every route declares who may call it
(`runner.access`), what it takes and answers (`runner.openapi`), and, for acts, its audit name.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from . import api_admin, api_ops, api_plugins, console_routes
from .api_audit import AUDIT_LOG, audit_trail
from .api_common import CONTROL, KEYS, REGISTRY
from .api_ops import READY, ReadinessProbe
from .audit import AuditLog
from .auth import ApiKeys
from .control import Control
from .metrics import install_metrics
from .middleware import ClientAddress, install_middlewares, peer_address
from .openapi import undocumented_routes
from .ratelimit import AdminRateLimits
from .registry import Registry
from .webhooks import WEBHOOKS, WebhookRouter
from .webhooks import add_routes as add_webhook_routes

DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024  # JSON bodies; uploads stream with their own limit
# A connection must bring a whole request head within this long of opening (or of its last
# answer), else it is closed: slow header senders (slowloris) hold nothing for long. aiohttp's
# keep-alive timer does this; its default (3630 s) would let them stay an hour.
HEADER_TIMEOUT_S: Final = 10.0


def build_app(
    control: Control,
    keys: ApiKeys,
    registry: Registry,
    audit: AuditLog,
    ready: ReadinessProbe,
    webhooks: WebhookRouter,
    *,
    limits: AdminRateLimits | None = None,
    client_address: ClientAddress = peer_address,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> web.Application:
    """Return the application; it refuses to start if a route is undeclared or undocumented."""
    app = web.Application(
        client_max_size=max_body_bytes,
        handler_args={"keepalive_timeout": HEADER_TIMEOUT_S},
    )
    app[CONTROL] = control
    app[KEYS] = keys
    app[REGISTRY] = registry
    app[AUDIT_LOG] = audit
    app[READY] = ready
    api_ops.add_routes(app)
    api_plugins.add_routes(app)
    api_admin.add_routes(app)
    console_routes.add_routes(app)
    app[WEBHOOKS] = webhooks
    add_webhook_routes(app)
    install_middlewares(
        app, keys, limits=limits, client_address=client_address, around_errors=[audit_trail]
    )
    install_metrics(app, control.host, audit)  # /metrics; after the middlewares (see there)
    app.on_startup.append(_check_documented)
    return app


async def _check_documented(app: web.Application) -> None:
    missing = undocumented_routes(app)
    if missing:
        raise RuntimeError(f"routes without @documented: {', '.join(missing)}")
