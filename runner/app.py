"""The aiohttp application. For now: liveness and a read-only listing of the shipped bundles.

The admin API, webhooks and supervision are later work; this module says so rather than pretend.
"""

from __future__ import annotations

from aiohttp import web

from protocol import config_schema

from .bundles import Bundle

BUNDLES: web.AppKey[list[Bundle]] = web.AppKey("bundles", list)


async def healthz(request: web.Request) -> web.Response:
    """Answer 200 while the process is alive."""
    return web.json_response({"status": "ok"})


async def list_plugins(request: web.Request) -> web.Response:
    """List the bundles found at start-up with their manifests and config schemas."""
    plugins = [
        {
            "id": b.manifest.id,
            "version": b.manifest.version,
            "name": b.manifest.display_name,
            "type": [c.kind for c in b.manifest.categories],
            "enabled": False,
            "settings_schema": config_schema(b.manifest),
        }
        for b in request.app[BUNDLES]
    ]
    return web.json_response({"plugins": plugins})


def build_app(bundles: list[Bundle]) -> web.Application:
    """Return the application serving `bundles`."""
    app = web.Application()
    app[BUNDLES] = bundles
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/plugins", list_plugins)
    return app
