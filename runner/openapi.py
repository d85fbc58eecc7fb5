"""The OpenAPI 3.1 document of the admin API, built from the routes and their pydantic models.

Each handler carries `@documented(...)` (what it takes and answers) beside its `@requires` or
`@public` (who may call it); `openapi_document(app)` walks the router and writes both down, so a
route cannot be served without being described. Error answers share one `ErrorBody` schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel

from .access import access_of
from .api_models import ErrorBody
from .http_errors import STATUS_CODES

H = TypeVar("H")

_ATTR: Final = "__corral_openapi__"
_REF: Final = "#/components/schemas/{model}"
_PARAM_RE: Final = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Query:
    """A query parameter."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    """What a route takes and answers. `body` is a model, or `multipart` for an upload."""

    summary: str
    responses: Mapping[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    multipart: bool = False
    query: Sequence[Query] = ()
    headers: Sequence[Query] = ()
    errors: Sequence[int] = ()
    tag: str = "admin"
    description: str = ""


def documented(
    summary: str,
    *,
    responses: Mapping[int, type[BaseModel] | None],
    body: type[BaseModel] | None = None,
    multipart: bool = False,
    query: Sequence[Query] = (),
    headers: Sequence[Query] = (),
    errors: Sequence[int] = (),
    tag: str = "admin",
    description: str = "",
) -> Callable[[H], H]:
    """Describe a handler for the OpenAPI document; `errors` lists its own error statuses."""
    operation = Operation(
        summary, responses, body, multipart, query, headers, errors, tag, description
    )

    def declare(handler: H) -> H:
        setattr(handler, _ATTR, operation)
        return handler

    return declare


def operation_of(handler: object) -> Operation | None:
    """Return a handler's description, or None."""
    operation = getattr(handler, _ATTR, None)
    return operation if isinstance(operation, Operation) else None


def undocumented_routes(app: web.Application) -> list[str]:
    """Return `METHOD path` for every route whose handler has no `@documented`."""
    return [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if route.method != "HEAD" and operation_of(route.handler) is None
    ]


def openapi_document(app: web.Application, *, title: str, version: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every documented route of `app`."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        operation = operation_of(route.handler)
        if route.method == "HEAD" or operation is None or route.resource is None:
            continue
        path = _PARAM_RE.sub(r"{\1}", route.resource.canonical)
        entry = _operation(operation, route.handler, path, schemas)
        paths.setdefault(path, {})[route.method.lower()] = entry
    _add_schema(ErrorBody, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _operation(
    operation: Operation, handler: object, path: str, schemas: dict[str, Any]
) -> dict[str, Any]:
    access = access_of(handler)
    is_public = access is None or access.is_public
    entry: dict[str, Any] = {"summary": operation.summary, "tags": [operation.tag]}
    if operation.description:
        entry["description"] = operation.description
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM_RE.findall(path)
    ]
    params += [
        {"name": q.name, "in": "query", "description": q.description, "schema": dict(q.schema)}
        for q in operation.query
    ]
    params += [
        {"name": h.name, "in": "header", "description": h.description, "schema": dict(h.schema)}
        for h in operation.headers
    ]
    if params:
        entry["parameters"] = params
    errors = set(operation.errors)
    content: dict[str, Any] = {}
    if operation.body is not None:
        content["application/json"] = {"schema": _add_schema(operation.body, schemas)}
    if operation.multipart:
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {"bundle": {"type": "string", "format": "binary"}},
                "required": ["bundle"],
            }
        }
    if content:
        entry["requestBody"] = {"required": True, "content": content}
        errors |= {400, 413, 415, 422}
    if not is_public:
        entry["security"] = [{"apiKey": []}, {"bearer": []}]
        scopes = sorted(access.scopes) if access else []
        entry["x-required-scopes"] = scopes
        errors |= {401, 403, 429}
    responses: dict[str, Any] = {}
    for status, model in sorted(operation.responses.items()):
        answer: dict[str, Any] = {"description": _describe(status)}
        if model is not None:
            answer["content"] = {"application/json": {"schema": _add_schema(model, schemas)}}
        responses[str(status)] = answer
    error_ref = {"$ref": _REF.format(model=ErrorBody.__name__)}
    for status in sorted(errors - set(operation.responses)):
        responses[str(status)] = {
            "description": STATUS_CODES.get(status, "error"),
            "content": {"application/json": {"schema": error_ref}},
        }
    entry["responses"] = responses
    return entry


def _add_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF, mode="serialization")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": _REF.format(model=model.__name__)}


def _describe(status: int) -> str:
    return {200: "OK", 201: "Created", 204: "No content"}.get(status, str(status))
