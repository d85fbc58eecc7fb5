"""Operations routes: liveness, readiness, workers, API keys, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Final

import psutil
from aiohttp import web

from . import __version__
from .access import CALLER, OPERATOR, public, requires
from .api_audit import audited, note
from .api_common import CONTROL, KEYS, checked_tenant, json_answer, parse_body
from .api_models import (
    Health,
    KeyCreated,
    KeyIn,
    KeyList,
    KeyOut,
    Readiness,
    ReadinessCheck,
    WorkerActionOut,
    WorkerList,
    WorkerOut,
)
from .http_errors import ApiError
from .keys import KeyRecord, Scope
from .middleware import PRINCIPAL
from .openapi import documented, openapi_document
from .supervisor import ActivationKey, ActivationNotFoundError

ReadinessProbe = Callable[[], list[ReadinessCheck] | Awaitable[list[ReadinessCheck]]]
READY: Final[web.AppKey[ReadinessProbe]] = web.AppKey("ready")  # set by whoever starts the app
TITLE: Final = "corral admin API"


@public
@documented("Liveness: the process answers", responses={200: Health}, tag="health")
async def healthz(request: web.Request) -> web.Response:
    """GET /healthz."""
    return json_answer(Health(status="ok"))


@public
@documented(
    "Readiness: store loaded, plugins verified, sandbox policy satisfied",
    responses={200: Readiness, 503: Readiness},
    tag="health",
)
async def readyz(request: web.Request) -> web.Response:
    """GET /readyz."""
    probed = request.app[READY]()
    checks = await probed if inspect.isawaitable(probed) else probed
    ok = bool(checks) and all(c.ok for c in checks)
    body = Readiness(status="ready" if ok else "not_ready", checks=checks)
    return json_answer(body, status=200 if ok else 503)


@public
@documented("This document", responses={200: None}, tag="health")
async def openapi(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json."""
    return web.json_response(openapi_document(request.app, title=TITLE, version=__version__))


@requires(Scope.PLUGINS_READ, tenant_from=OPERATOR)
@documented("Every worker: state, restarts, last exit, memory", responses={200: WorkerList})
async def list_workers(request: web.Request) -> web.Response:
    """GET /api/v1/workers."""
    return json_answer(WorkerList(workers=await _workers(request)))


@requires(Scope.PLUGINS_WRITE, tenant_from=OPERATOR)
@audited("worker.restart")
@documented(
    "Replace a worker with a fresh one (the old one drains)",
    responses={200: WorkerActionOut},
    errors=[404, 503],
)
async def restart_worker(request: web.Request) -> web.Response:
    """POST /api/v1/workers/{worker_id}/restart."""
    key, instance = _parse_worker_id(request.match_info["worker_id"])
    try:
        await request.app[CONTROL].host.supervisor.restart(key, instance)
    except ActivationNotFoundError as exc:
        raise _no_worker() from exc
    return json_answer(
        WorkerActionOut(action="restart", workers=await _workers(request, key, instance))
    )


@requires(Scope.PLUGINS_WRITE, tenant_from=OPERATOR)
@audited("worker.reset_circuit")
@documented(
    "Close an activation's open circuit and start its workers again now",
    responses={200: WorkerActionOut},
    errors=[404],
)
async def reset_circuit(request: web.Request) -> web.Response:
    """POST /api/v1/workers/{worker_id}/reset-circuit (every slot of the activation)."""
    key, _ = _parse_worker_id(request.match_info["worker_id"])
    try:
        request.app[CONTROL].host.supervisor.reset_circuit(key)
    except ActivationNotFoundError as exc:
        raise _no_worker() from exc
    return json_answer(
        WorkerActionOut(action="reset_circuit", workers=await _workers(request, key))
    )


@requires(Scope.KEYS_MANAGE, tenant_from=CALLER)
@audited("key.create")
@documented(
    "Create an API key; the key is in this answer only", body=KeyIn, responses={201: KeyCreated}
)
async def create_key(request: web.Request) -> web.Response:
    """POST /api/v1/admin/keys."""
    body = await parse_body(request, KeyIn)
    tenant = checked_tenant(body.tenant_id) if body.tenant_id is not None else None
    record, key = await request.app[KEYS].create(
        body.name, body.scopes, tenant, by=request[PRINCIPAL]
    )
    note(request, record.id)
    note(request, scopes=",".join(sorted(record.scopes)), bound_to=tenant)
    return json_answer(KeyCreated(key=key, record=_key_out(record)), status=201)


@requires(Scope.KEYS_MANAGE, tenant_from=CALLER)
@documented("List the API keys the caller may see", responses={200: KeyList})
async def list_keys(request: web.Request) -> web.Response:
    """GET /api/v1/admin/keys."""
    records = await request.app[KEYS].list_keys(by=request[PRINCIPAL])
    return json_answer(KeyList(keys=[_key_out(r) for r in records]))


@requires(Scope.KEYS_MANAGE, tenant_from=CALLER)
@audited("key.revoke")
@documented("Revoke an API key at once", responses={200: KeyOut}, errors=[404])
async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /api/v1/admin/keys/{key_id}."""
    record = await request.app[KEYS].revoke(request.match_info["key_id"], by=request[PRINCIPAL])
    return json_answer(_key_out(record))


def _key_out(record: KeyRecord) -> KeyOut:
    return KeyOut.model_validate(record.public())


def _parse_worker_id(worker_id: str) -> tuple[ActivationKey, int | None]:
    parts = worker_id.split(":")
    if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and not parts[2].isdigit()):
        raise _no_worker()
    instance = int(parts[2]) if len(parts) == 3 else None
    return ActivationKey(parts[0], parts[1]), instance


def _no_worker() -> ApiError:
    return ApiError(404, "not_found", "no such worker")


async def _workers(
    request: web.Request, key: ActivationKey | None = None, instance: int | None = None
) -> list[WorkerOut]:
    statuses = request.app[CONTROL].host.supervisor.statuses()
    rows = [
        (a, s)
        for a in statuses
        for s in a.slots
        if (key is None or (a.tenant_id, a.plugin_id) == (key.tenant_id, key.plugin_id))
        and (instance is None or s.instance == instance)
    ]
    pids = [s.pid for _, s in rows]
    rss = await asyncio.to_thread(lambda: [_rss(pid) for pid in pids])
    return [
        WorkerOut(
            id=f"{a.tenant_id}:{a.plugin_id}:{s.instance}",
            tenant_id=a.tenant_id,
            plugin_id=a.plugin_id,
            instance=s.instance,
            state=str(s.state),
            pid=s.pid,
            restarts=s.restarts,
            last_exit=s.last_exit,
            last_error=s.last_error,
            retry_after_s=s.retry_after_s,
            rss_bytes=memory,
            calls=s.calls,
            inflight=s.inflight,
        )
        for (a, s), memory in zip(rows, rss, strict=True)
    ]


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def add_routes(app: web.Application) -> None:
    """Add the operations routes to `app`."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/api/v1/workers", list_workers)
    app.router.add_post("/api/v1/workers/{worker_id}/restart", restart_worker)
    app.router.add_post("/api/v1/workers/{worker_id}/reset-circuit", reset_circuit)
    app.router.add_post("/api/v1/admin/keys", create_key)
    app.router.add_get("/api/v1/admin/keys", list_keys)
    app.router.add_delete("/api/v1/admin/keys/{key_id}", revoke_key)
