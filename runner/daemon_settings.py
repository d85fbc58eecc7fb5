"""The daemon's settings: every `CORRAL_*` variable, typed and documented, from env and a TOML file.

`DaemonSettings` lists each variable the service reads (its TOML key is the variable's name in lower
case without `CORRAL_`). `load_daemon_settings` merges an optional TOML file, the environment (which
wins) and command-line overrides (which win over both), naming the key of every bad value.
`to_environ` turns the result back into the mapping `ServiceSettings.from_env` consumes, so the
subsystems keep parsing their own variables; docs/configuration.md holds `markdown_table()`.
"""

from __future__ import annotations

import json
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import RunnerError

PREFIX: Final = "CORRAL_"
CONFIG_FILE_VARIABLE: Final = "CORRAL_CONFIG_FILE"
# Names the environment accepts for Faxbot compatibility; never TOML keys.
ALIASES: Final = {
    "config_path": "FAXBOT_CONFIG_PATH",
    "feature_v3_plugins": "FEATURE_V3_PLUGINS",
    "plugin_install": "FEATURE_PLUGIN_INSTALL",
}
_BOOL_FORMS: Final = {"uvloop": ("1", "0")}
_LIST_SPLIT: Final = re.compile(r"[,\s]+")
_PARTIAL: Final = "partial"


class DaemonSettingsError(RunnerError):
    """The settings file or a `CORRAL_*` variable is unusable; `problems` names each key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings: " + "; ".join(problems))
        self.problems = problems


def _text(description: str, default: Any = None, **constraints: Any) -> Any:
    return Field(default=default, description=description, **constraints)


class DaemonSettings(BaseModel):
    """Every setting of `corral serve`; field `listen_port` is the variable `CORRAL_LISTEN_PORT`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The daemon itself
    state_dir: Path | None = _text(
        "plugin store, worker scratch, runtime copy (default `/var/lib/corral` as root, else "
        "`~/.local/state/corral`); worker uids must be able to traverse it"
    )
    listen_host: str = _text(
        "address to bind (`--host` overrides)", default="127.0.0.1", min_length=1
    )
    listen_port: int = _text("port to bind (`--port` overrides)", default=8080, ge=1, le=65535)
    tls_cert: Path | None = _text("PEM certificate chain: with `tls_key`, serve HTTPS (TLS 1.2+)")
    tls_key: Path | None = _text("PEM private key of `tls_cert`")
    shutdown_grace_seconds: float = _text(
        "on SIGTERM/SIGINT, how long in-flight requests may take to finish", default=30.0, ge=0
    )
    allowlist_path: Path | None = _text(
        "the operator's `allowlist.toml` (default: the one at the repository root)"
    )
    checksums_path: Path | None = _text(
        "the operator's `checksums.txt` (default: the one at the repository root)"
    )
    # Host, sandbox and install
    profile: Literal["default", "hipaa"] = _text(
        "`hipaa` forces strict sandboxing, refuses remote install and more (docs/operations.md)",
        default="default",
    )
    sandbox_mode: Literal["strict", "permissive"] = _text(
        "`permissive` starts workers with missing layers (and warns on every start)",
        default="strict",
    )
    plugin_install: bool | None = _text(
        "allow install from an https URL; overrides `features.plugin_install` "
        "(alias `FEATURE_PLUGIN_INSTALL`)"
    )
    feature_v3_plugins: bool | None = _text(
        "overrides `features.v3_plugins`: false turns the plugin endpoints off "
        "(alias `FEATURE_V3_PLUGINS`)"
    )
    worker_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _text(
        "log level inside workers", default="INFO"
    )
    worker_idle_seconds: float = _text(
        "stop a worker after this long without a call (0: never)", default=0.0, ge=0
    )
    uvloop: bool = _text(
        "false runs the host's and the workers' event loops on plain asyncio", default=True
    )
    log_format: Literal["json", "text", "auto"] = _text(
        "host log lines: JSON, readable text, or `auto` (text on a terminal, else JSON)",
        default="auto",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _text(
        "the host's log level", default="INFO"
    )
    # Config store, keys and audit trail
    config_path: Path | None = _text(
        "the config document (default `<state dir>/config/corral.config.json`; a relative path "
        "is taken from the working directory; alias `FAXBOT_CONFIG_PATH`)"
    )
    config_backups: int = _text("backup generations kept", default=5, ge=0, le=100)
    secret_key_file: Path | None = _text(
        "the key encrypting secrets at rest (default beside the document); required under hipaa"
    )
    bootstrap_key_file: Path | None = _text(
        "an existing file holding the bootstrap API key (default: generated once into "
        "`<state dir>/bootstrap-key`)"
    )
    store: str | None = _text(
        "`postgresql://...`: keep the config, audit chain, replay cache and installed bundles in "
        "PostgreSQL, shared by several hosts (docs/store-postgresql.md); unset: the JSON store",
        pattern=r"^postgres(ql)?://",
    )
    audit_log: Path | None = _text("the audit trail (default `<state dir>/audit/audit.log`)")
    audit_max_bytes: int = _text(
        "rotate the trail past this size", default=10 * 1024 * 1024, ge=4096
    )
    audit_keep: int = _text("rotated trail files kept", default=5, ge=1)
    audit_fsync: bool = _text("fsync every audit append", default=True)
    plugin_registry: Path | None = _text(
        "the curated registry (default: `registry.json` at the repository root)"
    )
    # Admin API and webhooks
    rate_reads_per_minute: float = _text("admin API reads per key", default=600.0, gt=0)
    rate_writes_per_minute: float = _text("admin API writes per key", default=60.0, gt=0)
    rate_failed_auth_per_minute: float = _text(
        "failed authentications per client address", default=10.0, gt=0
    )
    webhook_rate_per_minute: float = _text(
        "webhook requests per route and tenant", default=600.0, gt=0
    )
    public_base_url: str | None = _text(
        "`https://host[:port][/prefix]`: the public URL webhook signatures are checked against"
    )
    trusted_proxies: tuple[str, ...] = _text(
        "addresses or CIDRs whose forwarding headers are trusted", default=()
    )
    proxy_headers: Literal["x-forwarded", "forwarded"] = _text(
        "which headers a trusted proxy sets", default="x-forwarded"
    )
    metrics_public: bool = _text(
        "`/metrics` answers without a key (for a scraper on a private network)", default=False
    )
    # Egress (docs/egress.md)
    egress_allowed_private_networks: tuple[str, ...] = _text(
        "CIDRs plugins may reach although not public", default=()
    )
    egress_http_hosts: tuple[str, ...] = _text(
        "host patterns that may be reached over plain http", default=()
    )
    egress_deny_hosts: tuple[str, ...] = _text(
        "host patterns refused whatever the manifests grant", default=()
    )
    egress_allow_hosts: tuple[str, ...] | None = _text(
        "when set, only these host patterns may be reached (on top of the manifests' grants)"
    )
    egress_max_request_bytes: int = _text("largest request body", default=4 * 1024 * 1024, ge=0)
    egress_max_response_bytes: int = _text("largest response body", default=4 * 1024 * 1024, ge=0)
    egress_timeout_s: float = _text("upper bound on one request's total time", default=60.0, gt=0)
    egress_max_redirects: int = _text("redirects followed", default=5, ge=0)
    egress_concurrency: int = _text("requests in flight per activation", default=8, ge=1)
    egress_concurrency_wait_s: float = _text("wait for a free slot", default=2.0, ge=0)
    egress_max_connections: int = _text("connections kept to providers", default=100, ge=1)
    egress_host_overrides: tuple[str, ...] = _text(
        "**tests only** (`host=scheme://ip:port`); refused under hipaa", default=()
    )

    @field_validator("profile", "sandbox_mode", "proxy_headers", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("worker_log_level", "log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator(
        "trusted_proxies",
        "egress_allowed_private_networks",
        "egress_http_hosts",
        "egress_deny_hosts",
        "egress_allow_hosts",
        "egress_host_overrides",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item for item in _LIST_SPLIT.split(value) if item)
        return tuple(value) if isinstance(value, list) else value

    @field_validator("egress_allow_hosts")
    @classmethod
    def _allow_not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            # An empty value reads as unset downstream: no restriction at all. Refuse it.
            raise ValueError("an empty list would allow every host; leave it unset instead")
        return value

    @model_validator(mode="after")
    def _tls_pair(self, info: ValidationInfo) -> DaemonSettings:
        if info.context != _PARTIAL and (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key (CORRAL_TLS_CERT, CORRAL_TLS_KEY) go together")
        return self

    @property
    def is_tls(self) -> bool:
        """Whether HTTPS is served."""
        return self.tls_cert is not None


def variable(name: str) -> str:
    """Return the environment variable of field `name` (`listen_port` → `CORRAL_LISTEN_PORT`)."""
    return PREFIX + name.upper()


VARIABLES: Final = {variable(name): name for name in DaemonSettings.model_fields}


def load_daemon_settings(
    environ: Mapping[str, str],
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DaemonSettings:
    """Merge the TOML file, the environment and `overrides` (by field name), later ones winning.

    The file is `config_file`, else `$CORRAL_CONFIG_FILE`, else none. File values must have the
    right TOML type (`listen_port = "80"` is refused); environment values are text. Raises
    DaemonSettingsError listing every problem, each naming its key or variable (never a value).
    """
    problems: list[str] = []
    if config_file is None and environ.get(CONFIG_FILE_VARIABLE, "").strip():
        config_file = Path(environ[CONFIG_FILE_VARIABLE].strip())
    file_values: dict[str, Any] = {}
    if config_file is not None:
        file_values = _read_toml(config_file, problems)
    env_values = {
        name: environ[var] for var, name in VARIABLES.items() if environ.get(var, "").strip()
    }
    merged = {
        **_validated(file_values, lambda key: f"{config_file}: {key}", problems, strict=True),
        **_validated(env_values, variable, problems, strict=False),
        **{k: v for k, v in (overrides or {}).items() if v is not None},
    }
    if problems:
        raise DaemonSettingsError(problems)
    try:
        return DaemonSettings.model_validate(merged)
    except ValidationError as exc:
        raise DaemonSettingsError(_messages(exc, variable)) from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Return the `CORRAL_*` variables set in `environ` that no setting reads (typos, mostly)."""
    known = set(VARIABLES) | {CONFIG_FILE_VARIABLE}
    return sorted(k for k in environ if k.startswith(PREFIX) and k not in known)


def to_environ(
    settings: DaemonSettings, environ: Mapping[str, str], *, defaults: bool = False
) -> dict[str, str]:
    """Return `environ` with every `CORRAL_*` setting replaced by its validated, merged value.

    Settings left at their default are absent (each subsystem applies its own default), unless
    `defaults` is true. Other variables (aliases, `PATH`, ...) pass through unchanged.
    """
    out = {k: v for k, v in environ.items() if k not in VARIABLES}
    chosen = DaemonSettings.model_fields if defaults else settings.model_fields_set
    for name in chosen:
        value = getattr(settings, name)
        if value is not None:
            out[variable(name)] = _render(name, value)
    return out


def _render(name: str, value: object) -> str:
    if isinstance(value, bool):
        yes, no = _BOOL_FORMS.get(name, ("true", "false"))
        return yes if value else no
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        problems.append(f"{path}: cannot read the settings file ({exc.strerror or exc})")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML ({exc})")
        return {}
    flat: dict[str, Any] = {}
    _flatten(document, "", flat, path, problems)
    return flat


def _flatten(
    table: Mapping[str, Any], prefix: str, out: dict[str, Any], path: Path, problems: list[str]
) -> None:
    """`[egress] max_redirects = 3` is `egress_max_redirects = 3`; unknown keys are problems."""
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}_", out, path, problems)
        elif name not in DaemonSettings.model_fields:
            hint = " (the TOML key is the variable's name without CORRAL_, in lower case)"
            problems.append(f"{path}: {name}: unknown setting" + (hint if "CORRAL" in key else ""))
        elif name in out:
            problems.append(f"{path}: {name}: set twice (as a key and inside a section)")
        else:
            out[name] = value


def _validated(
    values: dict[str, Any], label: Any, problems: list[str], *, strict: bool
) -> dict[str, Any]:
    if not values:
        return {}
    try:
        if strict:  # JSON mode: a TOML string stays a string (a path), never becomes a number
            text = json.dumps(values, default=str)
            model = DaemonSettings.model_validate_json(text, strict=True, context=_PARTIAL)
        else:
            model = DaemonSettings.model_validate(values, context=_PARTIAL)
    except ValidationError as exc:
        problems.extend(_messages(exc, label))
        return {}
    return {name: getattr(model, name) for name in values}


def _messages(exc: ValidationError, label: Any) -> list[str]:
    out = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        where = label(str(loc[0])) if loc else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        out.append(f"{where}: {message}")
    return out


def describe_type(name: str) -> str:
    """Return a short, human name of a field's type for the documentation table."""
    annotation = DaemonSettings.model_fields[name].annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if get_origin(annotation) is Literal:
        return " \\| ".join(f"`{choice}`" for choice in get_args(annotation))
    if get_origin(annotation) is tuple:
        return "list"
    names: dict[object, str] = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        Path: "path",
    }
    return names.get(annotation, str(annotation))


def markdown_table() -> str:
    """Return the settings table docs/configuration.md embeds (a test keeps them equal)."""
    rows = ["| variable | TOML key | type | default | meaning |", "|---|---|---|---|---|"]
    for name, info in DaemonSettings.model_fields.items():
        default = info.default
        if isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        elif default in (None, "", ()):
            shown = "unset"
        else:
            shown = f"`{default}`"
        rows.append(
            f"| `{variable(name)}` | `{name}` | {describe_type(name)} | {shown} | "
            f"{info.description} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
