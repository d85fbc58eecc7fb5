"""Operator routes for plugins: install, uninstall, and activation per tenant (or global).

Installing takes a multipart upload (field `bundle`, a .zip or .tar.gz), a path on the server,
or an https URL when remote install is on and the profile is not HIPAA. Every install passes the
same checksum and allowlist checks as `corral plugins install`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from pathlib import Path
from typing import Final

from aiohttp import BodyPartReader, web

from .access import OPERATOR, from_body, requires
from .api_audit import audited, note
from .api_common import json_answer, parse_body, require_plugins_feature, tenant_of
from .api_models import ActivationIn, ActivationOut, InstalledOut, InstallIn, UninstalledOut
from .control import Workers
from .http_errors import ApiError
from .install_store import InstalledPlugin
from .keys import Scope
from .openapi import Query, documented

WRITE = Scope.PLUGINS_WRITE
UPLOAD_FIELD: Final = "bundle"
_CHUNK: Final = 256 * 1024
_NAME_RE: Final = re.compile(r"[^A-Za-z0-9._-]")


@requires(WRITE, tenant_from=OPERATOR)
@audited("plugin.install")
@documented(
    "Install a plugin bundle (upload, server path, or URL when remote install is on)",
    body=InstallIn,
    multipart=True,
    responses={201: InstalledOut},
    errors=[403, 404, 502, 503],
    description="Send `application/json` with `path` or `url`, or `multipart/form-data` with "
    "the bundle file in the field `bundle`. The bundle must be listed in checksums.txt (an "
    "upload is matched by its sha256) and allowed by allowlist.toml.",
)
async def install(request: web.Request) -> web.Response:
    """POST /api/v1/admin/plugins."""
    control = await require_plugins_feature(request)
    if request.content_type == "multipart/form-data":
        limit = control.host.installer.settings.limits.max_archive_bytes
        upload_dir = control.host.settings.state_dir / "uploads" / secrets.token_hex(8)
        try:
            path = await _receive_upload(request, upload_dir, limit)
            note(request, source="upload")
            record, workers = await control.install(path, uploaded=True)
        finally:
            await asyncio.to_thread(shutil.rmtree, upload_dir, True)
    else:
        body = await parse_body(request, InstallIn)
        source = body.path if body.path is not None else str(body.url)
        note(request, source="path" if body.path is not None else "url")
        record, workers = await control.install(source)
    note(request, record.plugin_id)
    note(request, version=record.version)
    return json_answer(_installed(record, workers), status=201)


@requires(WRITE, tenant_from=OPERATOR)
@audited("plugin.uninstall")
@documented(
    "Uninstall every version of a plugin",
    responses={200: UninstalledOut},
    query=[Query("force", "`true` deactivates it for every tenant first", {"type": "boolean"})],
    errors=[404, 409],
)
async def uninstall(request: web.Request) -> web.Response:
    """DELETE /api/v1/admin/plugins/{id}."""
    control = await require_plugins_feature(request)
    force_text = request.query.get("force", "false").lower()
    if force_text not in ("true", "false"):
        raise ApiError(400, "bad_request", "force is true or false")
    plugin_id = request.match_info["id"]
    tenants, removed = await control.uninstall(plugin_id, force=force_text == "true")
    note(request, force=force_text == "true", deactivated=len(tenants))
    versions = sorted(r.version for r in removed)
    return json_answer(UninstalledOut(id=plugin_id, versions=versions, deactivated_for=tenants))


@requires(WRITE, tenant_from=from_body("tenant_id"))
@audited("plugin.activate")
@documented(
    "Activate a plugin for a tenant (or global), with its stored settings",
    body=ActivationIn,
    responses={200: ActivationOut},
    errors=[404, 503],
)
async def activate(request: web.Request) -> web.Response:
    """POST /api/v1/admin/plugins/{id}/activate."""
    return await _set_enabled(request, enabled=True)


@requires(WRITE, tenant_from=from_body("tenant_id"))
@audited("plugin.deactivate")
@documented(
    "Deactivate a plugin for a tenant (or global); its settings are kept",
    body=ActivationIn,
    responses={200: ActivationOut},
    errors=[404],
)
async def deactivate(request: web.Request) -> web.Response:
    """POST /api/v1/admin/plugins/{id}/deactivate."""
    return await _set_enabled(request, enabled=False)


async def _set_enabled(request: web.Request, *, enabled: bool) -> web.Response:
    control = await require_plugins_feature(request)
    if request.body_exists:
        await parse_body(request, ActivationIn)  # the tenant rule read it; this checks its shape
    tenant = tenant_of(request)
    plugin_id = request.match_info["id"]
    workers = await control.set_enabled(tenant, plugin_id, enabled)
    note(request, workers=str(workers))
    return json_answer(
        ActivationOut(plugin_id=plugin_id, tenant_id=tenant, enabled=enabled, workers=workers)
    )


async def _receive_upload(request: web.Request, directory: Path, limit: int) -> Path:
    """Stream the `bundle` part to a private file in `directory`, cutting it at `limit` (413)."""
    reader = await request.multipart()
    part = await reader.next()
    while part is not None and not (isinstance(part, BodyPartReader) and part.name == UPLOAD_FIELD):
        part = await reader.next()
    if part is None or not isinstance(part, BodyPartReader):
        raise ApiError(
            400, "bad_request", f"send the bundle in the multipart field {UPLOAD_FIELD!r}"
        )
    name = _NAME_RE.sub("_", Path(part.filename or "bundle").name)[-100:] or "bundle"
    if not name.lower().endswith((".zip", ".tar.gz", ".tgz")):
        raise ApiError(422, "invalid_bundle", "an uploaded bundle is a .zip or a .tar.gz file")
    await asyncio.to_thread(directory.mkdir, 0o700, True)
    path = directory / name
    size = 0
    with await asyncio.to_thread(path.open, "wb") as out:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"the bundle is larger than {limit} bytes")
            await asyncio.to_thread(out.write, chunk)
    return path


def _installed(record: InstalledPlugin, workers: dict[str, Workers]) -> InstalledOut:
    return InstalledOut(
        id=record.plugin_id,
        version=record.version,
        digest=record.digest,
        source=record.source,
        signed_by=record.signed_by,
        installed_at=record.installed_at,
        workers=workers,
    )


def add_routes(app: web.Application) -> None:
    """Add the plugin administration routes to `app`."""
    app.router.add_post("/api/v1/admin/plugins", install)
    app.router.add_delete("/api/v1/admin/plugins/{id}", uninstall)
    app.router.add_post("/api/v1/admin/plugins/{id}/activate", activate)
    app.router.add_post("/api/v1/admin/plugins/{id}/deactivate", deactivate)
