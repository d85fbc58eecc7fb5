"""The scope-by-endpoint matrix on the real app: 401 without a key, 403 with a missing scope or
a foreign tenant, and through otherwise. Also: the OpenAPI document covers every route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import pytest_asyncio

from runner.access import access_of
from runner.keys import ALL_SCOPES, Scope
from tests.runner.api_harness import TWILIO, Api, running_api

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

READ, WRITE, MANAGE = Scope.PLUGINS_READ, Scope.PLUGINS_WRITE, Scope.KEYS_MANAGE
MINE, OTHER = "tenant-mine", "tenant-other"
TenantRule = Literal["query", "path", "body", "operator", "caller"]


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # the router's canonical path
    scopes: frozenset[Scope]
    tenant: TenantRule
    body: Any = None

    def request(self, tenant: str | None) -> tuple[str, Any]:
        """Return (path, body) acting on `tenant` (None: leave the tenant unsaid)."""
        path = self.template.replace("{id}", TWILIO).replace("{key_id}", "0" * 16)
        path = path.replace("{worker_id}", f"{MINE}:{TWILIO}:0")
        body = self.body
        if self.tenant == "path":
            path = path.replace("{tenant_id}", tenant or MINE)
        if self.tenant == "query" and tenant is not None:
            path += f"?tenant_id={tenant}"
        if self.tenant == "body":
            body = {**(body or {}), "tenant_id": tenant}
        return path, body


ROUTES = [
    Route("GET", "/plugins", frozenset({READ}), "query"),
    Route("GET", "/plugins/{id}/config", frozenset({READ}), "query"),
    Route(
        "PUT",
        "/plugins/{id}/config",
        frozenset({WRITE, MANAGE}),
        "query",
        {"enabled": False, "settings": {"account_sid": 1}},
    ),
    Route("GET", "/plugin-registry", frozenset({READ}), "query"),
    Route("GET", "/api/v1/tenants/{tenant_id}/plugins/active-schemas", frozenset({READ}), "path"),
    Route(
        "POST", "/api/v1/admin/plugins", frozenset({WRITE}), "operator", {"path": "/nonexistent"}
    ),
    Route("DELETE", "/api/v1/admin/plugins/{id}", frozenset({WRITE}), "operator"),
    Route("POST", "/api/v1/admin/plugins/{id}/activate", frozenset({WRITE}), "body", {}),
    Route("POST", "/api/v1/admin/plugins/{id}/deactivate", frozenset({WRITE}), "body", {}),
    Route("GET", "/metrics", frozenset({READ}), "operator"),
    Route("GET", "/api/v1/workers", frozenset({READ}), "operator"),
    Route("POST", "/api/v1/workers/{worker_id}/restart", frozenset({WRITE}), "operator"),
    Route("POST", "/api/v1/workers/{worker_id}/reset-circuit", frozenset({WRITE}), "operator"),
    Route(
        "POST",
        "/api/v1/admin/keys",
        frozenset({MANAGE}),
        "caller",
        {"name": "n", "scopes": ["keys:manage"], "tenant_id": MINE},
    ),
    Route("GET", "/api/v1/admin/keys", frozenset({MANAGE}), "caller"),
    Route("DELETE", "/api/v1/admin/keys/{key_id}", frozenset({MANAGE}), "caller"),
]
IDS = [f"{r.method} {r.template}" for r in ROUTES]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api() -> AsyncIterator[Api]:
    async with running_api() as api:
        yield api


async def test_the_matrix_covers_every_route_that_needs_a_key(api: Api) -> None:
    served = {
        (r.method, r.resource.canonical)
        for r in api.service.app.router.routes()
        if r.method != "HEAD" and r.resource is not None and not access_of(r.handler).is_public  # type: ignore[union-attr]
    }
    assert served == {(r.method, r.template) for r in ROUTES}
    for route in api.service.app.router.routes():
        declared = access_of(route.handler)
        if route.method != "HEAD" and declared is not None and not declared.is_public:
            matrix = next(
                r
                for r in ROUTES
                if (r.method, r.template) == (route.method, route.resource.canonical)
            )  # type: ignore[union-attr]
            assert declared.scopes == matrix.scopes


async def test_openapi_documents_every_route_with_its_scopes(api: Api) -> None:
    doc = (await api.call("GET", "/api/v1/openapi.json", key=None)).body
    assert doc["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in api.service.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert documented == served
    for route in ROUTES:
        operation = doc["paths"][route.template][route.method.lower()]
        assert set(operation["x-required-scopes"]) == set(route.scopes)
        assert {"401", "403", "429"} <= set(operation["responses"])


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_no_key_is_401(api: Api, route: Route) -> None:
    path, body = route.request(MINE)
    answer = await api.call(route.method, path, key=None, json_body=body)
    assert (answer.status, answer.body["error"]) == (401, "unauthorized")
    assert answer.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_each_missing_scope_is_403(api: Api, route: Route) -> None:
    for missing in route.scopes:
        key = await api.new_key(ALL_SCOPES - {missing})
        path, body = route.request(MINE)
        answer = await api.call(route.method, path, key=key, json_body=body)
        assert (answer.status, answer.body["error"]) == (403, "forbidden"), missing


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_exactly_the_declared_scopes_get_through(api: Api, route: Route) -> None:
    key = await api.new_key(route.scopes)
    path, body = route.request(MINE)
    answer = await api.call(route.method, path, key=key, json_body=body)
    assert answer.status not in (401, 403), answer.text


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_a_tenant_key_stays_in_its_tenant(api: Api, route: Route) -> None:
    key = await api.new_key(ALL_SCOPES, MINE)
    if route.tenant == "operator":
        path, body = route.request(None)
        answer = await api.call(route.method, path, key=key, json_body=body)
        assert answer.status == 403, "a tenant key acted operator-wide"
        return
    if route.tenant != "caller":
        path, body = route.request(OTHER)
        foreign = await api.call(route.method, path, key=key, json_body=body)
        assert foreign.status == 403, "a tenant key reached another tenant"
    path, body = route.request(MINE)
    own = await api.call(route.method, path, key=key, json_body=body)
    assert own.status not in (401, 403), own.text
