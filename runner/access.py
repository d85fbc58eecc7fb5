"""Route access declarations: which scopes a route needs and which tenant it acts on.

A handler is decorated `@requires(Scope..., tenant_from=RULE)` or `@public`; the auth middleware
reads that off the matched handler and refuses (500, logged) a route that declares nothing.
The tenant rule names the tenant a request acts on; a tenant-bound key may act only on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar

from aiohttp import web

from .auth import Principal
from .http_errors import ApiError, read_json
from .keys import Scope

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

_ATTR: Final = "__corral_access__"


class TenantRule(Protocol):
    """Says which tenant a request acts on."""

    async def target(self, request: web.Request, principal: Principal) -> str | None:
        """Return the tenant the request acts on, or None for an operator-wide act."""
        ...


@dataclass(frozen=True)
class _Operator:
    async def target(self, request: web.Request, principal: Principal) -> str | None:
        return None


@dataclass(frozen=True)
class _Caller:
    async def target(self, request: web.Request, principal: Principal) -> str | None:
        return principal.tenant_id


@dataclass(frozen=True)
class PathTenant:
    """The tenant is the path parameter `name`; a route without it is operator-wide."""

    name: str

    async def target(self, request: web.Request, principal: Principal) -> str | None:
        """Return the path parameter's value."""
        return request.match_info.get(self.name) or None


@dataclass(frozen=True)
class QueryTenant:
    """The tenant is the query parameter `name`; without it, `missing` says whose act it is."""

    name: str
    missing: Literal["operator", "caller"] = "operator"

    async def target(self, request: web.Request, principal: Principal) -> str | None:
        """Return the query parameter's value; 400 if it is given twice."""
        values = request.query.getall(self.name, [])
        if len(values) > 1:
            raise ApiError(400, "bad_request", f"query parameter {self.name} given twice")
        if values and values[0]:
            return values[0]
        return principal.tenant_id if self.missing == "caller" else None


@dataclass(frozen=True)
class BodyTenant:
    """The tenant is the JSON body's top-level `field`; absent or null means operator-wide.

    Reading the body here (after authentication) keeps it cached for the handler.
    """

    field: str

    async def target(self, request: web.Request, principal: Principal) -> str | None:
        """Return the field's value; 400/415 for a bad body, 422 if the field is not a string."""
        if not request.body_exists:
            return None
        body = await read_json(request)
        value = body.get(self.field) if isinstance(body, dict) else None
        if value is not None and not isinstance(value, str):
            raise ApiError(422, "validation_failed", f"{self.field} must be a string or null")
        return value or None


OPERATOR: Final[TenantRule] = _Operator()
"""The route acts operator-wide (install, keys, workers): tenant-bound keys are refused."""

CALLER: Final[TenantRule] = _Caller()
"""The route acts on the caller's own tenant (operator keys: operator-wide); never refuses."""


def from_path(name: str = "tenant_id") -> TenantRule:
    """The tenant is the path parameter `name`."""
    return PathTenant(name)


def from_query(
    name: str = "tenant_id", *, missing: Literal["operator", "caller"] = "operator"
) -> TenantRule:
    """The tenant is the query parameter `name`; `missing` says whose act it is without it."""
    return QueryTenant(name, missing)


def from_body(field: str = "tenant_id") -> TenantRule:
    """The tenant is the JSON body's top-level `field`."""
    return BodyTenant(field)


@dataclass(frozen=True)
class Access:
    """A route's declaration: the scopes it needs, and its tenant rule (None: public)."""

    scopes: frozenset[Scope]
    tenant: TenantRule | None

    @property
    def is_public(self) -> bool:
        """Whether the route needs no key at all."""
        return self.tenant is None


def requires(*scopes: Scope, tenant_from: TenantRule) -> Callable[[H], H]:
    """Declare that a handler needs every one of `scopes` and acts on `tenant_from`'s tenant."""
    if not scopes:
        raise ValueError("requires() needs at least one scope; use @public for open routes")
    access = Access(frozenset(scopes), tenant_from)

    def declare(handler: H) -> H:
        setattr(handler, _ATTR, access)
        return handler

    return declare


def public(handler: H) -> H:
    """Declare that a handler needs no key (for `/healthz` and the like)."""
    setattr(handler, _ATTR, Access(frozenset(), None))
    return handler


def access_of(handler: object) -> Access | None:
    """Return a handler's declaration, or None if it declares none."""
    access = getattr(handler, _ATTR, None)
    return access if isinstance(access, Access) else None


def undeclared_routes(app: web.Application) -> list[str]:
    """Return `METHOD path` for every route of `app` whose handler declares no access."""
    return [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if access_of(route.handler) is None
    ]
