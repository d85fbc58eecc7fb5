"""The plugin manifest (`plugin.toml`): parsing, validation with path-qualified messages, and the
JSON Schema of a plugin's per-tenant config.

Unknown keys are errors. Parsing never imports or runs plugin code.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from . import categories
from .errors import ManifestError

MANIFEST_NAME: Final = "plugin.toml"
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_TIMEOUT_SECONDS: Final = 10.0
MAX_WEBHOOK_BODY_BYTES: Final = 64 * 1024 * 1024
MAX_WEBHOOK_TIMEOUT_SECONDS: Final = 300.0
MAX_INSTANCES: Final = 16

_ID = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_ROUTE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_WEBHOOK_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_HOST_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_PERMISSION_HOST = re.compile(rf"^(\*\.)?{_HOST_LABEL}(\.{_HOST_LABEL})+(:(?P<port>\d{{1,5}}))?$")
OUTBOUND_PREFIX: Final = "network.outbound:"
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

ConfigType = Literal["string", "integer", "number", "boolean", "url"]
Verify = Literal[
    "hmac-sha256", "hmac-sha1", "twilio", "stripe", "standard-webhooks", "plugin", "none"
]
SignatureEncoding = Literal["hex", "base64"]


class Category(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A category the plugin implements, with its dispatch priority (lower runs first)."""

    kind: str
    priority: int = 100
    instances: int = 1


class ConfigField(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One per-tenant setting; `secret` fields are masked in every API answer."""

    name: str
    type: ConfigType = "string"
    label: str = ""
    required: bool = False
    secret: bool = False
    default: Any = None
    enum: list[Any] | None = None
    description: str = ""


class WebhookRoute(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An inbound route mounted at /webhook/{slug}/{tenant}{path}.

    `verify` names how core checks the signature before the plugin sees the request;
    `secret_field` names the config field that holds the shared secret.
    """

    route_id: str
    path: str
    verify: Verify
    methods: list[str] = msgspec.field(default_factory=lambda: ["POST"])
    description: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    secret_field: str | None = None
    signature_header: str | None = None
    signature_encoding: SignatureEncoding = "hex"
    tolerance_seconds: int = 300


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A validated plugin.toml. Build it with `parse_manifest` or `load_manifest`."""

    id: str
    version: str
    display_name: str
    protocol_version: int
    description: str = ""
    author: str = ""
    homepage: str = ""
    license: str = ""
    min_host_version: str = "0.0.0"
    slug: str | None = None
    entrypoint: str = "plugin"  # the module in the bundle that defines `plugin = sdk.Plugin(...)`
    permissions: list[str] = msgspec.field(default_factory=list)
    categories: list[Category] = msgspec.field(default_factory=list)
    config: list[ConfigField] = msgspec.field(default_factory=list)
    webhook: list[WebhookRoute] = msgspec.field(default_factory=list)

    @property
    def url_slug(self) -> str:
        """The slug used in webhook URLs: `slug` if set, else the full id."""
        return self.slug or self.id

    @property
    def outbound_hosts(self) -> list[str]:
        """The host patterns of every `network.outbound:` permission."""
        return [
            p[len(OUTBOUND_PREFIX) :] for p in self.permissions if p.startswith(OUTBOUND_PREFIX)
        ]

    @property
    def secret_fields(self) -> frozenset[str]:
        """Names of config fields marked secret."""
        return frozenset(f.name for f in self.config if f.secret)

    def priority(self, kind: str) -> int:
        """Return the priority declared for `kind`; raise KeyError if not declared."""
        for category in self.categories:
            if category.kind == kind:
                return category.priority
        raise KeyError(kind)


def load_manifest(path: Path) -> Manifest:
    """Read and validate the manifest at `path` (a plugin.toml or a directory holding one)."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"$: cannot read manifest: {exc}"], str(path)) from exc
    return parse_manifest(text, source=str(path))


def parse_manifest(text: str, *, source: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate TOML text; raise ManifestError listing every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError([f"$: invalid TOML: {exc}"], source) from exc
    try:
        manifest = msgspec.convert(raw, Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError([_with_path(str(exc))], source) from exc
    problems = _check(manifest)
    if problems:
        raise ManifestError(problems, source)
    return manifest


def _with_path(message: str) -> str:
    # msgspec says "... - at `$.categories[0]`"; lead with the path, as our own checks do.
    head, sep, tail = message.rpartition(" - at `")
    return f"{tail.rstrip('`')}: {head}" if sep else f"$: {message}"


def _check(m: Manifest) -> list[str]:
    problems: list[str] = []

    def need(ok: bool, path: str, message: str) -> None:
        if not ok:
            problems.append(f"{path}: {message}")

    need(bool(_ID.match(m.id)), "$.id", f"{m.id!r} is not a reverse-DNS id like com.example.fax")
    need(bool(_SEMVER.match(m.version)), "$.version", f"{m.version!r} is not a semantic version")
    need(
        bool(_SEMVER.match(m.min_host_version)),
        "$.min_host_version",
        f"{m.min_host_version!r} is not a semantic version",
    )
    need(bool(m.display_name.strip()), "$.display_name", "must not be empty")
    need(m.slug is None or bool(_SLUG.match(m.slug)), "$.slug", f"{m.slug!r} is not URL-safe")
    need(bool(_MODULE.match(m.entrypoint)), "$.entrypoint", f"{m.entrypoint!r} is not a module")
    for i, permission in enumerate(m.permissions):
        problems.extend(_check_permission(f"$.permissions[{i}]", permission))
    need(bool(m.categories), "$.categories", "a plugin implements at least one category")
    seen_kinds: set[str] = set()
    for i, cat in enumerate(m.categories):
        path = f"$.categories[{i}]"
        need(
            cat.kind in categories.known_kinds(),
            f"{path}.kind",
            f"unknown category {cat.kind!r}; known: {', '.join(sorted(categories.known_kinds()))}",
        )
        need(cat.kind not in seen_kinds, f"{path}.kind", f"{cat.kind!r} is declared twice")
        need(1 <= cat.instances <= MAX_INSTANCES, f"{path}.instances", f"1..{MAX_INSTANCES}")
        seen_kinds.add(cat.kind)
    problems.extend(_check_config(m.config))
    problems.extend(_check_webhooks(m, seen_kinds))
    return problems


def _check_permission(path: str, permission: str) -> list[str]:
    if not permission.startswith(OUTBOUND_PREFIX):
        return [f"{path}: unknown permission {permission!r}; expected network.outbound:<host>"]
    match = _PERMISSION_HOST.match(permission[len(OUTBOUND_PREFIX) :])
    if match is None:
        return [f"{path}: {permission!r} must name a host or *.domain, optionally with :port"]
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        return [f"{path}: port {port} out of range"]
    return []


_PY_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "url": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _check_config(fields: list[ConfigField]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    for i, f in enumerate(fields):
        path = f"$.config[{i}]"
        if not _NAME.match(f.name):
            problems.append(f"{path}.name: {f.name!r} must be a lower-case identifier")
        if f.name in names:
            problems.append(f"{path}.name: {f.name!r} is declared twice")
        names.add(f.name)
        if f.default is not None and not _is_type(f.default, f.type):
            problems.append(f"{path}.default: {f.default!r} is not a {f.type}")
        if f.enum is not None:
            if not f.enum:
                problems.append(f"{path}.enum: must not be empty")
            for j, value in enumerate(f.enum):
                if not _is_type(value, f.type):
                    problems.append(f"{path}.enum[{j}]: {value!r} is not a {f.type}")
            if f.default is not None and f.default not in f.enum:
                problems.append(f"{path}.default: {f.default!r} is not one of enum")
        if f.secret and f.default is not None:
            problems.append(f"{path}.default: a secret field cannot have a default")
    return problems


def _is_type(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name != "boolean":
        return False
    return isinstance(value, _PY_TYPES[type_name])


def _check_webhooks(m: Manifest, kinds: set[str]) -> list[str]:
    problems: list[str] = []
    if m.webhook and "webhook_handler" not in kinds:
        problems.append("$.webhook: routes need the webhook_handler category")
    config_names = {f.name for f in m.config}
    route_ids: set[str] = set()
    for i, route in enumerate(m.webhook):
        path = f"$.webhook[{i}]"
        if not _ROUTE_ID.match(route.route_id):
            problems.append(f"{path}.route_id: {route.route_id!r} is not URL-safe")
        if route.route_id in route_ids:
            problems.append(f"{path}.route_id: {route.route_id!r} is declared twice")
        route_ids.add(route.route_id)
        if not _WEBHOOK_PATH.match(route.path):
            problems.append(f"{path}.path: {route.path!r} must start with / and be URL-safe")
        bad = [x for x in route.methods if x not in HTTP_METHODS]
        if bad or not route.methods:
            problems.append(f"{path}.methods: {bad or '[]'} not in {sorted(HTTP_METHODS)}")
        if not 1 <= route.max_body_bytes <= MAX_WEBHOOK_BODY_BYTES:
            problems.append(f"{path}.max_body_bytes: 1..{MAX_WEBHOOK_BODY_BYTES}")
        if not 0 < route.timeout_seconds <= MAX_WEBHOOK_TIMEOUT_SECONDS:
            problems.append(f"{path}.timeout_seconds: (0, {MAX_WEBHOOK_TIMEOUT_SECONDS:g}]")
        if route.verify in ("plugin", "none"):
            continue
        if route.secret_field is None:
            problems.append(f"{path}.secret_field: verify={route.verify!r} needs a secret field")
        elif route.secret_field not in config_names:
            problems.append(f"{path}.secret_field: {route.secret_field!r} is not a config field")
    return problems


_JSON_TYPES: Final = {
    "string": "string",
    "url": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
}


def config_schema(manifest: Manifest) -> dict[str, Any]:
    """Return the JSON Schema (2020-12) of the plugin's per-tenant config subtree.

    Secret fields carry `writeOnly: true`; unknown settings are rejected.
    """
    properties: dict[str, Any] = {}
    for f in manifest.config:
        prop: dict[str, Any] = {"type": _JSON_TYPES[f.type]}
        if f.type == "url":
            prop["format"] = "uri"
            prop["pattern"] = "^https?://"
        if f.label:
            prop["title"] = f.label
        if f.description:
            prop["description"] = f.description
        if f.default is not None:
            prop["default"] = f.default
        if f.enum is not None:
            prop["enum"] = list(f.enum)
        if f.secret:
            prop["writeOnly"] = True
        properties[f.name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": manifest.display_name,
        "type": "object",
        "properties": properties,
        "required": [f.name for f in manifest.config if f.required],
        "additionalProperties": False,
    }
