"""The aiohttp application. For now: liveness and a read-only listing of the verified plugins.

The admin API and webhooks are later work; this module says so rather than pretend.
"""

from __future__ import annotations

from aiohttp import web

from protocol import config_schema

from .host import Host

HOST: web.AppKey[Host] = web.AppKey("host", Host)


async def healthz(request: web.Request) -> web.Response:
    """Answer 200 while the process is alive."""
    return web.json_response({"status": "ok"})


async def list_plugins(request: web.Request) -> web.Response:
    """List the verified plugins with their manifests and config schemas."""
    host = request.app[HOST]
    plugins = []
    for plugin_id, record in sorted(host.plugins.items()):
        manifest = host.manifests[plugin_id]
        plugins.append(
            {
                "id": plugin_id,
                "version": record.version,
                "digest": record.digest,
                "name": manifest.display_name,
                "type": [c.kind for c in manifest.categories],
                "enabled": False,
                "settings_schema": config_schema(manifest),
            }
        )
    return web.json_response({"plugins": plugins})


def build_app(host: Host) -> web.Application:
    """Return the application serving `host`."""
    app = web.Application()
    app[HOST] = host
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/plugins", list_plugins)
    return app
