"""What the admin API's handlers share: the app's keys, the tenant a request acts on, bodies.

Handlers stay thin: they read the request with these helpers, call `Control`, and answer with a
model from `runner.api_models`. Errors are raised, never answered here (`runner.http_errors`).
"""

from __future__ import annotations

import re
from typing import Final, TypeVar

from aiohttp import web
from pydantic import BaseModel

from .auth import ApiKeys
from .config_model import TENANT_ID_PATTERN
from .control import Control
from .http_errors import ApiError, read_json
from .middleware import TENANT
from .registry import Registry
from .supervisor import GLOBAL

M = TypeVar("M", bound=BaseModel)

CONTROL: Final = web.AppKey("control", Control)
KEYS: Final = web.AppKey("keys", ApiKeys)
REGISTRY: Final = web.AppKey("registry", Registry)
TENANT_RE: Final = re.compile(TENANT_ID_PATTERN)  # the config document's own rule


def tenant_of(request: web.Request) -> str:
    """Return the tenant the request acts on: the checked target, else `global`.

    Raises ApiError 422 for a tenant id that could never exist.
    """
    tenant = request.get(TENANT) or GLOBAL
    return checked_tenant(tenant)


def checked_tenant(tenant_id: str) -> str:
    """Return `tenant_id` if it is well-formed; raise ApiError 422 otherwise."""
    if TENANT_RE.fullmatch(tenant_id) is None:
        raise ApiError(
            422,
            "validation_failed",
            "a tenant id is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
        )
    return tenant_id


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read the JSON body into `model`; 415, 400 (malformed) and 422 (with paths) otherwise."""
    return model.model_validate(await read_json(request))


async def require_plugins_feature(request: web.Request) -> Control:
    """Return the Control, or answer 404 `feature_disabled` when v3 plugins are turned off."""
    control = request.app[CONTROL]
    snapshot = await control.store.peek()
    if not control.store.features(snapshot).v3_plugins:
        raise ApiError(
            404,
            "feature_disabled",
            "plugin management is turned off (CORRAL_FEATURE_V3_PLUGINS / FEATURE_V3_PLUGINS)",
        )
    return control


def etag_header(etag: str) -> dict[str, str]:
    """Return the `ETag` header for an ETag value."""
    return {"ETag": f'"{etag}"'}


def if_match(request: web.Request) -> str | None:
    """Return the ETag the request's `If-Match` names, None for none or `*`; 400 for a list."""
    raw = request.headers.get("If-Match", "").strip()
    if not raw or raw == "*":
        return None
    if "," in raw:
        raise ApiError(400, "bad_request", "If-Match takes one ETag")
    return raw.removeprefix("W/").strip('"')


def json_answer(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Answer with a model as JSON."""
    return web.json_response(
        model.model_dump(mode="json", by_alias=True), status=status, headers=headers
    )
