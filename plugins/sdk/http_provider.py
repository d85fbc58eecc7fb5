"""Run a compiled declarative provider: render an action into a request, send it through the host's
`http.request` (so the egress broker applies the manifest's grants, as for any plugin), and map
the JSON answer onto the category's result.

Secrets never reach a log line or an error message: logs name the action, host and HTTP status
only, and every message built from provider or host text has the tenant's secret values scrubbed.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from protocol import HttpResponse, RemoteError
from protocol.categories.outbound_fax import FaxJob, FaxQuery, SendFax

from . import providers
from .context import Context
from .http_spec import DERIVED, Action, Provider
from .http_spec import FilePart as FileTemplate
from .http_templates import MissingValueError, Placeholder, Template, to_text
from .providers import ConfigError, provider_error, redact_numbers

RETRYABLE_HOST_CODES: Final = frozenset({"timeout"})
MAX_MESSAGE_CHARS: Final = 300
MIN_SCRUBBED_CHARS: Final = 4  # shorter "secrets" would mangle every message they appear in
_UNSAFE_FILENAME: Final = re.compile(r"[^A-Za-z0-9._-]")
_MEDIA_TYPE: Final = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
_LINE_BREAK: Final = re.compile(r"[\r\n\0]")


def classify(status: int) -> tuple[str, bool]:
    """Return the error code and retryability of a non-2xx HTTP status."""
    if status == 429:
        return "rate_limited", True
    if status >= 500:
        return "provider_error", True
    return {
        401: ("auth_failed", False),
        403: ("auth_failed", False),
        402: ("insufficient_funds", False),
        404: ("not_found", False),
        400: ("invalid_request", False),
        422: ("invalid_request", False),
    }.get(status, ("provider_error", False))


class ProviderClient:
    """One tenant's view of a provider: its config, its secrets, and the host's HTTP client."""

    def __init__(self, provider: Provider, ctx: Context) -> None:
        self._provider = provider
        self._ctx = ctx
        self._config = dict(ctx.config)
        secrets = {
            v for k, v in self._config.items() if k in provider.secret_fields and isinstance(v, str)
        }
        secrets = {s for s in secrets if len(s) >= MIN_SCRUBBED_CHARS}
        secrets |= {urllib.parse.quote(s, safe="") for s in secrets}
        self._secrets = sorted(secrets, key=len, reverse=True)
        if provider.auth is not None:
            self._auth_header({"config": self._config})  # a missing credential fails the start

    def scrub(self, text: str) -> str:
        """Return `text` with every secret config value replaced by `***`."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def build(
        self, action: Action, scope: Mapping[str, Any]
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Render `action` into (url, headers, body); raise PluginError when a value is missing."""
        for placeholder in action.requires:
            if placeholder.resolve(scope) is None:
                raise provider_error(f"{action.name} needs {placeholder}", "invalid_request")
        try:
            url = action.url.render(scope, lambda s: urllib.parse.quote(s, safe=""))
            headers = self._headers(action, scope)
            content_type, body = self._body(action, scope)
        except MissingValueError as exc:
            code = "invalid_config" if _config_only(exc.placeholder) else "invalid_request"
            raise provider_error(
                f"{action.name} needs a value for {exc.placeholder}", code
            ) from None
        if content_type is not None and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", content_type))
        return url, headers, body

    async def call(self, action: Action, scope: Mapping[str, Any]) -> Any:
        """Send the action's request; return the decoded JSON answer (None if it had none)."""
        url, headers, body = self.build(action, scope)
        name = self._provider.name
        try:
            response = await self._ctx.http.request(
                action.method, url, headers=headers, body=body, timeout_s=action.timeout_s
            )
        except RemoteError as exc:
            # egress_denied, unavailable, timeout: keep the host's code so core can tell them apart.
            message = self.scrub(f"{name} {action.name} not completed: {exc.message}")
            retryable = exc.code in RETRYABLE_HOST_CODES
            raise RemoteError(
                exc.code, message, {"code": exc.code, "retryable": retryable}
            ) from None
        self._ctx.log.info("%s %s to %s: HTTP %d", name, action.name, action.host, response.status)
        try:
            answer = json.loads(response.body) if response.body.strip() else None
        except ValueError:
            answer = None
        if not 200 <= response.status < 300:
            raise self._failure(action, response, answer)
        success = action.response.get("success")
        if success is not None and _pick(answer, success) is not True:
            raise provider_error(
                f"{name} reported failure: {self._message(action, answer)}",
                "provider_error",
                http_status=response.status,
            )
        return answer

    def _failure(self, action: Action, response: HttpResponse, answer: Any) -> Exception:
        code, retryable = classify(response.status)
        retry_after = response.header("Retry-After")
        return provider_error(
            f"{self._provider.name} refused {action.name} (HTTP {response.status}): "
            f"{self._message(action, answer)}",
            code,
            retryable=retryable,
            http_status=response.status,
            retry_after_s=int(retry_after) if retry_after and retry_after.isdigit() else None,
        )

    def _message(self, action: Action, answer: Any) -> str:
        path = action.response.get("error")
        value = _pick(answer, path) if path is not None else None
        if value is None:
            return "no message"
        return self.scrub(redact_numbers(str(value)))[:MAX_MESSAGE_CHARS]

    def _auth_header(self, scope: Mapping[str, Any]) -> str | None:
        auth = self._provider.auth
        if auth is None:
            return None
        scheme, templates = auth
        try:
            values = [t.render(scope) for t in templates]
        except MissingValueError as exc:
            raise ConfigError(f"auth needs a value for {exc.placeholder}") from None
        if scheme == "basic":
            return providers.basic_auth(values[0], values[1])
        return f"Bearer {values[0]}"

    def _headers(self, action: Action, scope: Mapping[str, Any]) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        authorization = self._auth_header(scope)
        if authorization is not None:
            headers.append(("Authorization", authorization))
        for name, template in action.headers:
            value = template.value(scope)
            if value is None:
                continue  # an optional header whose only placeholder has no value
            text = value if isinstance(value, str) else to_text(value)
            if _LINE_BREAK.search(text):
                raise provider_error(f"header {name} would contain a line break", "invalid_request")
            headers.append((name, text))
        return headers

    def _body(self, action: Action, scope: Mapping[str, Any]) -> tuple[str | None, bytes]:
        if action.body_kind == "json":
            body = _render_json(action.json_body, scope)
            return "application/json", json.dumps(body, separators=(",", ":")).encode()
        fields = [(n, _text(t.value(scope))) for n, t in action.fields]
        present = [(n, v) for n, v in fields if v is not None]
        if action.body_kind == "form":
            return "application/x-www-form-urlencoded", urllib.parse.urlencode(present).encode()
        if action.body_kind == "multipart":
            files = [p for p in (_file(f, scope) for f in action.files) if p is not None]
            return providers.encode_multipart(present, files)
        return None, b""


def _config_only(placeholder: Placeholder) -> bool:
    return all(path[0] == "config" for path in placeholder.alternatives)


def _text(value: Any) -> str | None:
    return None if value is None else to_text(value)


def _file(part: FileTemplate, scope: Mapping[str, Any]) -> providers.FilePart | None:
    data = part.data.resolve(scope)
    if data is None:
        return None  # e.g. a content_url fax: the document part is left out
    filename = _UNSAFE_FILENAME.sub("_", part.filename.render(scope))[:100] or "document"
    content_type = part.content_type.render(scope)
    if not _MEDIA_TYPE.match(content_type):
        raise provider_error("content_type is not a media type", "invalid_request")
    return providers.FilePart(part.name, filename, content_type, bytes(data))


def _render_json(node: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, Template):
        return node.value(scope)
    if isinstance(node, dict):
        rendered = {k: _render_json(v, scope) for k, v in node.items()}
        return {k: v for k, v in rendered.items() if v is not None}  # an absent optional value
    if isinstance(node, list):
        return [_render_json(v, scope) for v in node]
    return node


def _pick(document: Any, path: tuple[str, ...]) -> Any:
    """Follow a response path through objects and arrays (numeric segments index arrays)."""
    value = document
    for segment in path:
        if isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        elif isinstance(value, Mapping):
            value = value.get(segment)
        else:
            return None
    return value


def request_scope(method: str, args: msgspec.Struct, config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the template scope of one call: `config` and `request` (with derived variables)."""
    request = msgspec.structs.asdict(args)
    for name, (_, derive) in DERIVED.get(method, {}).items():
        request[name] = derive(args)
    return {"config": config, "request": request}


class HttpOutboundFax:
    """outbound_fax over a provider.json; `load_provider` binds a subclass to its Provider."""

    provider: Provider

    def __init__(self, ctx: Context) -> None:
        self._client = ProviderClient(self.provider, ctx)
        self._config = dict(ctx.config)

    async def send_fax(self, args: SendFax) -> FaxJob:
        """Queue a fax with the provider's `send_fax` action."""
        return await self._job("send_fax", args, None)

    async def get_status(self, args: FaxQuery) -> FaxJob:
        """Ask the provider for a fax's state with its `get_status` action."""
        return await self._job("get_status", args, args.job_id)

    async def cancel_fax(self, args: FaxQuery) -> FaxJob:
        """Cancel a fax with the provider's `cancel_fax` action."""
        return await self._job("cancel_fax", args, args.job_id)

    async def _job(self, name: str, args: msgspec.Struct, job_id: str | None) -> FaxJob:
        action = self.provider.actions.get(name)
        if action is None:
            raise provider_error(f"{self.provider.name} does not support {name}", "not_supported")
        scope = request_scope(f"outbound_fax.{name}", args, self._config)
        answer = await self._client.call(action, scope)
        return self._fax_job(action, answer, job_id)

    def _fax_job(self, action: Action, answer: Any, job_id: str | None) -> FaxJob:
        paths = action.response
        raw_id = _pick(answer, paths["job_id"]) if "job_id" in paths else None
        raw_id = job_id if raw_id is None else raw_id
        if isinstance(raw_id, bool) or not isinstance(raw_id, int | str) or not str(raw_id):
            raise provider_error(f"{self.provider.name}'s answer lacks a job id", "provider_error")
        word = _pick(answer, paths["status"]) if "status" in paths else None
        provider_status = str(word) if isinstance(word, str | int) else None
        if provider_status is None:
            status = action.status_default
        else:
            status = action.status_map.get(provider_status.lower(), self.provider.unknown_status)
        pages = _pick(answer, paths["pages"]) if "pages" in paths else None
        code = _pick(answer, paths["error_code"]) if "error_code" in paths else None
        message = _pick(answer, paths["error_message"]) if "error_message" in paths else None
        return FaxJob(
            job_id=str(raw_id),
            status=status,
            provider_status=provider_status,
            pages=pages if isinstance(pages, int) and not isinstance(pages, bool) else None,
            error_code=None if code is None else str(code),
            error_message=None
            if message is None
            else self._client.scrub(redact_numbers(str(message)))[:MAX_MESSAGE_CHARS],
        )
