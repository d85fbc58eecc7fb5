"""The one mapping from exceptions to HTTP answers: status, error code, safe message, headers.

Every error body is `{"error": code, "message": ..., "request_id": ...}`, plus `details` (a list
of `{"path", "message"}`) for validation errors. Handlers raise; `runner.middleware` answers.
Messages never echo request values, so a secret sent in a body cannot come back in an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jsonschema
import pydantic
from aiohttp import web

from .auth import AuthenticationError, KeyNotFoundError, KeyRequestError, PermissionDeniedError
from .config_errors import (
    ConfigInvalidError,
    ConfigWriteError,
    PreconditionFailedError,
    SecretKeyError,
    SecretsMaskedError,
)
from .control_errors import (
    NotAppliedError,
    PluginInUseError,
    PluginUnknownError,
    SettingsInvalidError,
)
from .errors import RunnerError, WorkerStartError
from .install_errors import InstallError, Reason
from .keys import DuplicateKeyError
from .pg.errors import StoreUnavailableError
from .ratelimit import RateLimitedError

MAX_MESSAGE_CHARS: Final = 500
STATUS_CODES: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}
_INSTALL_STATUS: Final[Mapping[Reason, int]] = {
    Reason.TOO_LARGE: 413,
    Reason.REMOTE_INSTALL_DISABLED: 403,
    Reason.REMOTE_INSTALL_FORBIDDEN: 403,
    Reason.DOWNLOAD_FAILED: 502,
    Reason.MODIFIED: 503,
    Reason.MISSING: 503,
    Reason.NOT_INSTALLED: 404,
}
# Headers an aiohttp HTTPException may carry over into the JSON answer.
_KEPT_HEADERS: Final = ("Allow", "Retry-After", "WWW-Authenticate", "ETag")

Details = list[dict[str, str]]


class ApiError(RunnerError):
    """An error whose HTTP answer the raiser decides: `status`, `code`, optional `details`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Details | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class ErrorAnswer:
    """What an exception becomes over HTTP; `is_bug` marks a 500 to log with its traceback."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    details: Details | None = None
    is_bug: bool = False


def classify(exc: Exception) -> ErrorAnswer:
    """Return the HTTP answer for `exc`; anything not known here is a bug (500 `internal`)."""
    match exc:
        case ApiError():
            return ErrorAnswer(exc.status, exc.code, exc.message, exc.headers, exc.details)
        case AuthenticationError():
            return ErrorAnswer(401, "unauthorized", str(exc), {"WWW-Authenticate": "Bearer"})
        case PermissionDeniedError():
            return ErrorAnswer(403, "forbidden", str(exc))
        case RateLimitedError():
            headers = {"Retry-After": str(exc.retry_after_s)}
            return ErrorAnswer(429, "rate_limited", str(exc), headers)
        case KeyNotFoundError():
            return ErrorAnswer(404, "not_found", str(exc))
        case DuplicateKeyError():
            return ErrorAnswer(409, "conflict", str(exc))
        case KeyRequestError():
            return ErrorAnswer(422, "validation_failed", str(exc))
        case InstallError():
            details = [{"path": "", "message": p} for p in exc.problems] or None
            status = _INSTALL_STATUS.get(exc.reason, 422)
            return ErrorAnswer(status, str(exc.reason), exc.message, details=details)
        case PluginUnknownError():
            return ErrorAnswer(404, "plugin_not_found", str(exc))
        case PluginInUseError():
            details = [{"path": "$.tenants", "message": t} for t in exc.tenants[:50]]
            return ErrorAnswer(409, "plugin_in_use", str(exc), details=details)
        case SettingsInvalidError():
            details = [{"path": "$.settings" + p[1:], "message": m} for p, m in exc.problems]
            return ErrorAnswer(422, "validation_failed", str(exc), details=details)
        case NotAppliedError():
            return ErrorAnswer(503, "not_applied", str(exc))
        case PreconditionFailedError():
            message = (
                f"{exc.scope} changed since it was read; read it again (current ETag {exc.current})"
            )
            return ErrorAnswer(412, "precondition_failed", message, {"ETag": f'"{exc.current}"'})
        case SecretsMaskedError():
            message = f"$.settings.{exc.field}: '***' keeps a stored secret, but none is stored"
            return ErrorAnswer(422, "validation_failed", message)
        case ConfigInvalidError():
            details = [_problem_detail(p) for p in exc.problems]
            return ErrorAnswer(422, "validation_failed", "invalid configuration", details=details)
        case ConfigWriteError():
            return ErrorAnswer(
                503,
                "store_unavailable",
                "the config store cannot be written now; nothing was changed",
            )
        case StoreUnavailableError():  # the shared database (CORRAL_STORE) is unreachable
            return ErrorAnswer(
                503,
                "store_unavailable",
                "the shared store cannot be reached now; nothing was done, retry later",
                {"Retry-After": "5"},
            )
        case SecretKeyError():
            return ErrorAnswer(500, "internal", "a stored secret cannot be decrypted", is_bug=True)
        case WorkerStartError():
            return ErrorAnswer(503, "unavailable", f"plugin {exc.plugin_id} could not start")
        case json.JSONDecodeError():
            return ErrorAnswer(400, "malformed_json", f"request body is not valid JSON: {exc.msg}")
        case pydantic.ValidationError():
            return ErrorAnswer(422, "validation_failed", "invalid request", {}, model_details(exc))
        case jsonschema.ValidationError():
            details = schema_details([exc])
            return ErrorAnswer(422, "validation_failed", "invalid settings", {}, details)
        case web.HTTPException():
            return _from_http_exception(exc)
    return ErrorAnswer(500, "internal", "internal error", is_bug=True)


def error_body(
    code: str, message: str, request_id: str, details: Details | None = None
) -> dict[str, Any]:
    """Return the JSON body of an error answer."""
    body: dict[str, Any] = {"error": code, "message": message, "request_id": request_id}
    if details:
        body["details"] = details
    return body


def error_response(answer: ErrorAnswer, request_id: str) -> web.Response:
    """Return the JSON response for an answer."""
    message = answer.message[:MAX_MESSAGE_CHARS]
    body = error_body(answer.code, message, request_id, answer.details)
    return web.json_response(body, status=answer.status, headers=answer.headers)


def model_details(exc: pydantic.ValidationError) -> Details:
    """Return `{"path", "message"}` per pydantic error, without the offending input values."""
    return [
        {"path": _json_path(error["loc"]), "message": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def schema_details(errors: Iterable[jsonschema.ValidationError]) -> Details:
    """Return `{"path", "message"}` per JSON Schema error, naming the rule but not the value.

    jsonschema's own messages quote the instance, which may be a secret; these never do.
    """
    details = []
    for error in errors:
        rule = json.dumps(error.validator_value, default=str)[:100]
        details.append(
            {"path": error.json_path, "message": f"does not satisfy {error.validator} {rule}"}
        )
    return details


async def read_json(request: web.Request) -> Any:
    """Return the request's JSON body; 415 if not `application/json`, 400 if not JSON.

    A body past the app's `client_max_size` raises aiohttp's 413, which maps like any other.
    """
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await request.read()
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "malformed_json", "request body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc.msg}") from exc


def _problem_detail(problem: str) -> dict[str, str]:
    path, _, message = problem.partition(": ")
    return {"path": path, "message": message} if message else {"path": "$", "message": problem}


def _from_http_exception(exc: web.HTTPException) -> ErrorAnswer:
    status = exc.status
    default_text = f"{status}: {exc.reason}"
    text = exc.text if exc.text and exc.text != default_text else exc.reason
    headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    code = STATUS_CODES.get(status, "internal" if status >= 500 else "bad_request")
    return ErrorAnswer(status, code, text, headers)


def _json_path(loc: Iterable[int | str]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
