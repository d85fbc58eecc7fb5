"""The `provider.json` schema of declarative HTTP providers, and the compiled form the runtime uses.

Checking and compiling a file is `plugins.sdk.http_compile`'s business; sending requests is
`plugins.sdk.http_provider`'s.
"""

from __future__ import annotations

import base64
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from protocol import categories

from .http_templates import Placeholder, Template
from .plugin import PluginDefinitionError

PROVIDER_FILE: Final = "provider.json"
FAX_STATUSES: Final = frozenset({"queued", "in_progress", "success", "failed", "cancelled"})

Kind = Literal["text", "bytes", "map"]


# --- the file's schema --------------------------------------------------------------------------


class FileSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A file part of a multipart body: `data` is one placeholder of bytes."""

    data: str
    filename: str = "document"
    content_type: str = "application/octet-stream"


class BodySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`json` takes any JSON template; `form` and `multipart` an object of string templates."""

    kind: Literal["json", "form", "multipart", "none"] = "none"
    template: Any = None
    files: dict[str, FileSpec] = msgspec.field(default_factory=dict)


class ResponseSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Paths (dotted, `$.`-prefixed or JSON pointer) into the JSON answer, and status words."""

    job_id: str | None = None
    status: str | None = None
    pages: str | None = None
    error_code: str | None = None  # the job's failure code
    error_message: str | None = None  # the job's failure reason
    error: str | None = None  # the message of a refused request (non-2xx, or `success` false)
    success: str | None = None  # when set, this field must be JSON `true` on a 2xx
    status_map: dict[str, str] = msgspec.field(default_factory=dict)
    status_default: str | None = None


class ActionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One HTTP call, named after the category method it implements."""

    method: str
    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: BodySpec = msgspec.field(default_factory=BodySpec)
    response: ResponseSpec = msgspec.field(default_factory=ResponseSpec)
    requires: list[str] = msgspec.field(default_factory=list)
    timeout_ms: int | None = None


class AuthSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exactly one of `basic` ([user, password] templates) or `bearer` (a token template)."""

    basic: list[str] | None = None
    bearer: str | None = None


class ProviderSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole of provider.json."""

    id: str
    name: str
    allowed_domains: list[str]
    actions: dict[str, ActionSpec]
    auth: AuthSpec | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_ms: int = 30_000
    status_map: dict[str, str] = msgspec.field(default_factory=dict)
    unknown_status: str = "in_progress"


# --- the compiled form --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilePart:
    """A compiled multipart file."""

    name: str
    data: Placeholder
    filename: Template
    content_type: Template


@dataclass(frozen=True, slots=True)
class Action:
    """A compiled action: templates parsed, variables and host checked, statuses merged."""

    name: str
    method: str
    url: Template
    host: str
    headers: tuple[tuple[str, Template], ...]
    body_kind: str
    json_body: Any  # the template tree: dicts, lists, scalars and Templates for strings
    fields: tuple[tuple[str, Template], ...]
    files: tuple[FilePart, ...]
    response: Mapping[str, tuple[str, ...]]  # ResponseSpec field -> path segments
    status_map: Mapping[str, str]  # lower-cased provider word -> corral status
    status_default: str
    requires: tuple[Placeholder, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Provider:
    """A validated provider.json bound to its plugin.toml."""

    id: str
    name: str
    categories: tuple[str, ...]
    actions: Mapping[str, Action]
    auth: tuple[str, tuple[Template, ...]] | None  # ("basic"|"bearer", templates)
    unknown_status: str
    secret_fields: frozenset[str]  # config fields whose values are scrubbed from messages


class ProviderManifestError(PluginDefinitionError):
    """provider.json is unreadable or invalid; `problems` lists each with its JSON path."""

    def __init__(self, problems: list[str], source: str = PROVIDER_FILE) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems
        self.source = source


# Variables a method offers beyond its params struct's fields, computed from the params.
DERIVED: Final[Mapping[str, Mapping[str, tuple[Kind, Callable[[Any], Any]]]]] = {
    "outbound_fax.send_fax": {
        "file_base64": (
            "text",
            lambda a: None if a.document is None else base64.b64encode(a.document).decode(),
        ),
    },
}


def request_variables(kind: str, method: str) -> dict[str, Kind]:
    """Return the `request.*` variables of a category method and what each holds."""
    spec = categories.get(kind)
    params = spec.methods[method].params
    variables = {f.name: _kind_of(f.type) for f in msgspec.structs.fields(params)}
    for name, (var_kind, _) in DERIVED.get(spec.wire_name(method), {}).items():
        variables[name] = var_kind
    return variables


def _kind_of(annotation: Any) -> Kind:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for option in options or (annotation,):
        if option is bytes:
            return "bytes"
        if typing.get_origin(option) is dict or option is dict:
            return "map"
    return "text"
