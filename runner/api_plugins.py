"""Plugin routes for a tenant: the listing, one plugin's config, the registry, active schemas.

The tenant is `?tenant_id=` (a tenant key: its own tenant; an operator key without it: `global`).
Every route answers 404 `feature_disabled` while v3 plugins are turned off.
"""

from __future__ import annotations

from aiohttp import web

from .access import from_path, from_query, requires
from .api_audit import audited, note
from .api_common import (
    REGISTRY,
    checked_tenant,
    etag_header,
    if_match,
    json_answer,
    parse_body,
    require_plugins_feature,
    tenant_of,
)
from .api_models import (
    ActiveSchemas,
    PluginConfigIn,
    PluginConfigOut,
    PluginEntry,
    PluginList,
    RegistryOut,
)
from .control import PluginConfig
from .keys import Scope
from .openapi import Query, documented

READ = Scope.PLUGINS_READ
WRITE = Scope.PLUGINS_WRITE
TENANT_QUERY = Query(
    "tenant_id", "the tenant (default: a tenant key's own; for an operator key, `global`)"
)
IF_MATCH = Query("If-Match", "the ETag last read; 412 if the config changed since")


@requires(READ, tenant_from=from_query(missing="caller"))
@documented(
    "List installed plugins with the tenant's config",
    responses={200: PluginList},
    query=[TENANT_QUERY],
    errors=[404, 422],
)
async def list_plugins(request: web.Request) -> web.Response:
    """GET /plugins."""
    control = await require_plugins_feature(request)
    tenant = tenant_of(request)
    entries = [PluginEntry.model_validate(p) for p in await control.plugins(tenant)]
    return json_answer(PluginList(tenant_id=tenant, plugins=entries))


@requires(READ, tenant_from=from_query(missing="caller"))
@documented(
    "Read a plugin's config for the tenant (secrets masked)",
    responses={200: PluginConfigOut},
    query=[TENANT_QUERY],
    errors=[404, 422],
)
async def get_config(request: web.Request) -> web.Response:
    """GET /plugins/{id}/config."""
    control = await require_plugins_feature(request)
    config = await control.config(tenant_of(request), request.match_info["id"])
    return json_answer(_config_out(config), headers=etag_header(config.etag))


@requires(WRITE, Scope.KEYS_MANAGE, tenant_from=from_query(missing="caller"))
@audited("plugin.config.put")
@documented(
    "Replace a plugin's config for the tenant and switch its workers",
    body=PluginConfigIn,
    responses={200: PluginConfigOut},
    query=[TENANT_QUERY],
    headers=[IF_MATCH],
    errors=[404, 412, 503],
)
async def put_config(request: web.Request) -> web.Response:
    """PUT /plugins/{id}/config."""
    control = await require_plugins_feature(request)
    tenant = tenant_of(request)
    body = await parse_body(request, PluginConfigIn)
    config, workers = await control.put_config(
        tenant,
        request.match_info["id"],
        enabled=body.enabled,
        settings=body.settings,
        if_match=if_match(request),
    )
    note(request, enabled=body.enabled, workers=str(workers))
    return json_answer(_config_out(config, workers), headers=etag_header(config.etag))


@requires(READ, tenant_from=from_query(missing="caller"))
@documented(
    "Search the curated plugin registry",
    responses={200: RegistryOut},
    query=[Query("q", "a case-insensitive search over id, name, type and description")],
    errors=[404],
)
async def plugin_registry(request: web.Request) -> web.Response:
    """GET /plugin-registry."""
    await require_plugins_feature(request)
    providers = request.app[REGISTRY].search(request.query.get("q"))
    return json_answer(RegistryOut(providers=[p.model_dump(mode="json") for p in providers]))


@requires(READ, tenant_from=from_path("tenant_id"))
@documented(
    "The settings schema of every plugin enabled for a tenant",
    responses={200: ActiveSchemas},
    errors=[404, 422],
)
async def active_schemas(request: web.Request) -> web.Response:
    """GET /api/v1/tenants/{tenant_id}/plugins/active-schemas."""
    control = await require_plugins_feature(request)
    tenant = checked_tenant(request.match_info["tenant_id"])
    schemas = await control.active_schemas(tenant)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "plugins": {"type": "object", "properties": schemas, "additionalProperties": False}
        },
    }
    return json_answer(ActiveSchemas(tenant_id=tenant, plugins=schemas, settings_schema=document))


def _config_out(config: PluginConfig, workers: object = None) -> PluginConfigOut:
    return PluginConfigOut.model_validate(
        {
            "tenant_id": config.tenant_id,
            "plugin_id": config.plugin_id,
            "enabled": config.enabled,
            "settings": config.settings,
            "workers": workers,
        }
    )


def add_routes(app: web.Application) -> None:
    """Add the plugin routes to `app`."""
    app.router.add_get("/plugins", list_plugins)
    app.router.add_get("/plugins/{id}/config", get_config)
    app.router.add_put("/plugins/{id}/config", put_config)
    app.router.add_get("/plugin-registry", plugin_registry)
    app.router.add_get("/api/v1/tenants/{tenant_id}/plugins/active-schemas", active_schemas)
