"""Check and compile `provider.json` against its `plugin.toml`: every check that can be made before
a request exists (templates, variables, hosts, statuses) runs here, at load, and every problem is
reported with its JSON path.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from protocol import Manifest, categories
from protocol.manifest import HTTP_METHODS

from .http_spec import (
    FAX_STATUSES,
    PROVIDER_FILE,
    Action,
    ActionSpec,
    BodySpec,
    FilePart,
    Kind,
    Provider,
    ProviderManifestError,
    ProviderSpec,
    ResponseSpec,
    request_variables,
)
from .http_templates import Placeholder, Template, TemplateError, parse_path

MAX_TIMEOUT_MS: Final = 300_000
# The categories a provider.json can implement, with the actions each must define.
REQUIRED_ACTIONS: Final[Mapping[str, frozenset[str]]] = {"outbound_fax": frozenset({"send_fax"})}
DEFAULT_STATUS: Final[Mapping[str, str]] = {
    "send_fax": "queued",  # accepted, nothing more said
    "get_status": "in_progress",  # not terminal: the caller keeps asking
    "cancel_fax": "cancelled",  # a 2xx to a cancel is the confirmation
}
_RESERVED_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FIELD_NAME: Final = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,100}$")
_HOST: Final = re.compile(
    r"^(\*\.)?(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+(:\d{1,5})?$"
)


def parse_provider(data: bytes, manifest: Manifest, *, source: str = PROVIDER_FILE) -> Provider:
    """Decode and validate provider.json against its plugin.toml; raise ProviderManifestError."""
    try:
        spec = msgspec.json.decode(data, type=ProviderSpec)
    except msgspec.ValidationError as exc:
        raise ProviderManifestError([_with_path(str(exc))], source) from exc
    except msgspec.DecodeError as exc:
        raise ProviderManifestError([f"$: not JSON: {exc}"], source) from exc
    checker = _Checker(spec, manifest)
    provider = checker.compile()
    if checker.problems:
        raise ProviderManifestError(checker.problems, source)
    return provider


def _with_path(message: str) -> str:
    head, sep, tail = message.rpartition(" - at `")
    return f"{tail.rstrip('`')}: {head}" if sep else f"$: {message}"


def parse_response_path(text: str) -> tuple[str, ...]:
    """Split `data.id`, `$.data.id` or the JSON pointer `/data/id`; raise ValueError."""
    if text.startswith("/"):
        segments = [s.replace("~1", "/").replace("~0", "~") for s in text[1:].split("/")]
    else:
        segments = (text[2:] if text.startswith("$.") else text).split(".")
    if not text or not all(segments):
        raise ValueError(f"{text[:60]!r} is not a dotted path or JSON pointer")
    return tuple(segments)


def host_allowed(host: str, port: int | None, allowed: list[str]) -> bool:
    """Return whether the egress broker would grant `host[:port]` (https) to these domains.

    The same reading as the broker's: `*.x` covers subdomains, never `x`; a domain without a port
    grants only the default port.
    """
    port = port or 443
    for pattern in allowed:
        name, _, grant_port = pattern.lower().partition(":")
        if port != (int(grant_port) if grant_port else 443):
            continue
        if host == name or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


class _Checker:
    """Compile a ProviderSpec, collecting every problem with its JSON path."""

    def __init__(self, spec: ProviderSpec, manifest: Manifest) -> None:
        self.spec = spec
        self.manifest = manifest
        self.problems: list[str] = []
        self.config = {f.name for f in manifest.config}
        self.variables: dict[str, Kind] = {}
        self.method = ""

    def need(self, ok: bool, path: str, message: str) -> None:
        if not ok:
            self.problems.append(f"{path}: {message}")

    def compile(self) -> Provider:
        spec = self.spec
        self.need(bool(spec.id.strip()), "$.id", "must not be blank")
        self.need(bool(spec.name.strip()), "$.name", "must not be blank")
        self._check_domains()
        self._check_timeout(spec.timeout_ms, "$.timeout_ms")
        status_map = self._status_map(spec.status_map, "$.status_map")
        self._check_status(spec.unknown_status, "$.unknown_status")
        kinds = tuple(c.kind for c in self.manifest.categories)
        methods: dict[str, str] = {}
        for kind in kinds:
            if kind not in REQUIRED_ACTIONS:
                supported = ", ".join(sorted(REQUIRED_ACTIONS))
                self.need(False, "$", f"plugin.toml declares {kind!r}; supported: {supported}")
                continue
            methods.update(dict.fromkeys(categories.get(kind).methods, kind))
            for name in sorted(REQUIRED_ACTIONS[kind] - spec.actions.keys()):
                self.need(False, "$.actions", f"{kind} needs a {name!r} action")
        self.variables = {}
        auth = self._auth()
        shared = self._headers(spec.headers, "$.headers")
        actions: dict[str, Action] = {}
        for name, action in spec.actions.items():
            path = f"$.actions.{name}"
            if name not in methods:
                known = ", ".join(sorted(methods)) or "none"
                self.need(False, path, f"is not a method of the declared categories ({known})")
                continue
            self.variables = request_variables(methods[name], name)
            self.method = name
            actions[name] = self._action(name, action, path, shared, status_map)
        # Whatever authenticates is a secret, whether or not plugin.toml marks it so.
        auth_templates = auth[1] if auth is not None else ()
        auth_fields = {
            alternative[1]
            for template in auth_templates
            for placeholder in template.placeholders
            for alternative in placeholder.alternatives
            if alternative[0] == "config"
        }
        return Provider(
            id=spec.id,
            name=spec.name,
            categories=kinds,
            actions=actions,
            auth=auth,
            unknown_status=spec.unknown_status.lower(),
            secret_fields=self.manifest.secret_fields | auth_fields,
        )

    def _check_domains(self) -> None:
        domains = self.spec.allowed_domains
        self.need(bool(domains), "$.allowed_domains", "must name at least one host")
        for i, domain in enumerate(domains):
            self.need(
                bool(_HOST.match(domain)),
                f"$.allowed_domains[{i}]",
                f"{domain[:60]!r} is not a host or *.domain, optionally with :port",
            )
        declared = {h.lower() for h in self.manifest.outbound_hosts}
        listed = {d.lower() for d in domains}
        if declared != listed:
            self.need(
                False,
                "$.allowed_domains",
                "must equal plugin.toml's network.outbound permissions (only here: "
                f"{sorted(listed - declared)}, only in plugin.toml: {sorted(declared - listed)})",
            )

    def _check_timeout(self, value: int | None, path: str) -> None:
        ok = value is None or 1 <= value <= MAX_TIMEOUT_MS
        self.need(ok, path, f"must be 1..{MAX_TIMEOUT_MS}")

    def _check_status(self, value: str, path: str) -> None:
        ok = value.lower() in FAX_STATUSES
        self.need(ok, path, f"{value[:40]!r} is not one of {', '.join(sorted(FAX_STATUSES))}")

    def _status_map(self, raw: Mapping[str, str], path: str) -> dict[str, str]:
        mapped: dict[str, str] = {}
        for word, status in raw.items():
            self._check_status(status, f"{path}.{word}")
            self.need(word.lower() not in mapped, f"{path}.{word}", "listed twice (case ignored)")
            mapped[word.lower()] = status.lower()
        return mapped

    def template(
        self, text: str, path: str, kinds: frozenset[Kind] = frozenset({"text"})
    ) -> Template:
        try:
            template = Template.parse(text)
        except TemplateError as exc:
            self.need(False, path, str(exc))
            return Template((text,))
        if template.sole is None and len(template.parts) > 1:
            kinds = frozenset({"text"})  # mixed with literal text, a value is always text
        for placeholder in template.placeholders:
            self.placeholder(placeholder, path, kinds)
        return template

    def placeholder(self, placeholder: Placeholder, path: str, kinds: frozenset[Kind]) -> None:
        for alternative in placeholder.alternatives:
            kind = self._variable(alternative, path)
            if kind is not None and kind not in kinds:
                wanted = " or ".join(sorted(kinds))
                self.need(False, path, f"{'.'.join(alternative)} holds {kind}, not {wanted}")

    def _variable(self, segments: tuple[str, ...], path: str) -> Kind | None:
        root, name, rest = segments[0], segments[1], segments[2:]
        if root == "config":
            known = ", ".join(sorted(self.config)) or "none"
            self.need(
                name in self.config,
                path,
                f"config.{name} is not a plugin.toml [[config]] field (known: {known})",
            )
            self.need(not rest, path, f"config.{name} has no sub-fields")
            return "text"
        if not self.method:
            self.need(False, path, "only config.* is available outside an action")
            return None
        if name not in self.variables:
            known = ", ".join(sorted(self.variables))
            self.need(False, path, f"{self.method} has no request.{name} (known: {known})")
            return None
        kind = self.variables[name]
        if kind == "map" and len(rest) == 1:
            return "text"
        self.need(not rest, path, f"request.{name} has no sub-fields")
        return kind

    def _auth(self) -> tuple[str, tuple[Template, ...]] | None:
        auth = self.spec.auth
        if auth is None:
            return None
        if (auth.basic is None) == (auth.bearer is None):
            self.need(False, "$.auth", "give exactly one of basic or bearer")
            return None
        if auth.basic is not None:
            self.need(len(auth.basic) == 2, "$.auth.basic", "must be [user, password]")
            return "basic", tuple(
                self.template(t, f"$.auth.basic[{i}]") for i, t in enumerate(auth.basic)
            )
        assert auth.bearer is not None
        return "bearer", (self.template(auth.bearer, "$.auth.bearer"),)

    def _headers(self, raw: Mapping[str, str], path: str) -> tuple[tuple[str, Template], ...]:
        headers: list[tuple[str, Template]] = []
        for name, value in raw.items():
            where = f"{path}.{name}"
            self.need(bool(_TOKEN.match(name)), where, "is not a header name")
            self.need(name.lower() not in _RESERVED_HEADERS, where, "is set by the host")
            if name.lower() == "authorization":
                self.need(self.spec.auth is None, where, "conflicts with $.auth")
            headers.append((name, self.template(value, where)))
        return tuple(headers)

    def _action(
        self,
        name: str,
        spec: ActionSpec,
        path: str,
        shared: tuple[tuple[str, Template], ...],
        status_map: Mapping[str, str],
    ) -> Action:
        method = spec.method.upper()
        self.need(method in HTTP_METHODS, f"{path}.method", f"not one of {sorted(HTTP_METHODS)}")
        url = self.template(spec.url, f"{path}.url")
        host = self._check_url(spec.url, f"{path}.url")
        own = self._headers(spec.headers, f"{path}.headers")
        names = {n.lower() for n, _ in own}
        headers = tuple(h for h in shared if h[0].lower() not in names) + own
        body = spec.body
        fields, files, json_body = self._body(body, f"{path}.body")
        if body.kind in ("form", "multipart"):
            for header, _ in headers:
                self.need(
                    header.lower() != "content-type",
                    f"{path}.headers.{header}",
                    f"a {body.kind} body sets its own Content-Type",
                )
        if body.kind != "none":
            self.need(method not in ("GET", "HEAD"), f"{path}.body", f"{method} sends no body")
        response = self._response(spec.response, f"{path}.response")
        merged = {
            **status_map,
            **self._status_map(spec.response.status_map, f"{path}.response.status_map"),
        }
        default = spec.response.status_default or DEFAULT_STATUS.get(name, "in_progress")
        self._check_status(default, f"{path}.response.status_default")
        requires: list[Placeholder] = []
        for i, text in enumerate(spec.requires):
            try:
                placeholder = Placeholder((parse_path(text),))
            except TemplateError as exc:
                self.need(False, f"{path}.requires[{i}]", str(exc))
                continue
            self.placeholder(
                placeholder, f"{path}.requires[{i}]", frozenset({"text", "bytes", "map"})
            )
            requires.append(placeholder)
        self._check_timeout(spec.timeout_ms, f"{path}.timeout_ms")
        timeout_ms = spec.timeout_ms or self.spec.timeout_ms
        return Action(
            name=name,
            method=method,
            url=url,
            host=host,
            headers=headers,
            body_kind=body.kind,
            json_body=json_body,
            fields=fields,
            files=files,
            response=response,
            status_map=merged,
            status_default=default.lower(),
            requires=tuple(requires),
            timeout_s=timeout_ms / 1000,
        )

    def _check_url(self, text: str, path: str) -> str:
        """Check the static part of a URL: https, a literal host in allowed_domains."""
        try:
            parts = urllib.parse.urlsplit(text)
            port = parts.port
        except ValueError as exc:
            self.need(False, path, f"is not a URL: {exc}")
            return ""
        self.need(parts.scheme == "https", path, "must start with https://")
        self.need("{{" not in parts.netloc, path, "the host must be literal, not a placeholder")
        self.need("@" not in parts.netloc, path, "must not carry credentials")
        self.need(not parts.fragment, path, "must not have a #fragment")
        host = (parts.hostname or "").rstrip(".")
        if host and "{{" not in parts.netloc:
            self.need(
                host_allowed(host, port, self.spec.allowed_domains),
                path,
                f"host {host!r} is not in $.allowed_domains",
            )
        return host

    def _body(
        self, body: BodySpec, path: str
    ) -> tuple[tuple[tuple[str, Template], ...], tuple[FilePart, ...], Any]:
        self.need(
            not body.files or body.kind == "multipart", f"{path}.files", "only multipart has files"
        )
        if body.kind == "none":
            self.need(body.template is None, f"{path}.template", "a body of kind none has none")
            return (), (), None
        if body.kind == "json":
            self.need(body.template is not None, f"{path}.template", "a json body needs one")
            return (), (), self._json(body.template, f"{path}.template")
        template = body.template if body.template is not None else {}
        if not isinstance(template, dict) or not all(isinstance(v, str) for v in template.values()):
            self.need(False, f"{path}.template", f"a {body.kind} body is an object of strings")
            return (), (), None
        fields: list[tuple[str, Template]] = []
        for name, value in template.items():
            where = f"{path}.template.{name}"
            self.need(bool(_FIELD_NAME.match(name)), where, "is not a safe field name")
            fields.append((name, self.template(value, where)))
        files: list[FilePart] = []
        for name, spec in body.files.items():
            where = f"{path}.files.{name}"
            self.need(bool(_FIELD_NAME.match(name)), where, "is not a safe field name")
            data = self.template(spec.data, f"{where}.data", frozenset({"bytes"}))
            if data.sole is None:
                self.need(
                    False, f"{where}.data", "must be one placeholder, like {{request.document}}"
                )
                continue
            filename = self.template(spec.filename, f"{where}.filename")
            content_type = self.template(spec.content_type, f"{where}.content_type")
            files.append(FilePart(name, data.sole, filename, content_type))
        return tuple(fields), tuple(files), None

    def _json(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return self.template(value, path, frozenset({"text", "map"}))
        if isinstance(value, dict):
            return {k: self._json(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._json(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def _response(self, spec: ResponseSpec, path: str) -> dict[str, tuple[str, ...]]:
        paths: dict[str, tuple[str, ...]] = {}
        for field in (
            "job_id",
            "status",
            "pages",
            "error_code",
            "error_message",
            "error",
            "success",
        ):
            text = getattr(spec, field)
            if text is None:
                continue
            try:
                paths[field] = parse_response_path(text)
            except ValueError as exc:
                self.need(False, f"{path}.{field}", str(exc))
        return paths
