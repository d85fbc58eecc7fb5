"""The admin API's request and response bodies, as pydantic models.

Handlers parse requests into these models and build answers from them, and the OpenAPI
document is generated from them (`runner.openapi`), so the code and the document cannot drift.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from .control import Workers
from .keys import Scope
from .slot_types import WorkerState


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Model):
    """One validation problem: where (a JSON path) and which rule, never the value."""

    path: str
    message: str


class ErrorBody(_Model):
    """Every error answer."""

    error: str = Field(description="a stable machine-readable code, e.g. `validation_failed`")
    message: str
    request_id: str
    details: list[ErrorDetail] | None = None


class Health(_Model):
    """The process is alive."""

    status: Literal["ok"]


class ReadinessCheck(_Model):
    """One condition of readiness."""

    name: str
    ok: bool
    detail: str = ""


class Readiness(_Model):
    """Whether the host serves: store loaded, plugins verified, sandbox policy satisfied."""

    status: Literal["ready", "not_ready"]
    checks: list[ReadinessCheck]


class PluginEntry(_Model):
    """An installed plugin, with the caller's tenant's config (secrets as `***`)."""

    id: str
    name: str
    version: str
    type: str = Field(description="the first category the plugin implements")
    categories: list[str]
    description: str
    digest: str
    enabled: bool
    settings: dict[str, JsonValue]
    settings_schema: dict[str, Any]
    manifest: dict[str, Any]


class PluginList(_Model):
    """Every installed, verified plugin."""

    tenant_id: str
    plugins: list[PluginEntry]


class PluginConfigIn(_Model):
    """A tenant's whole config of one plugin (PUT replaces it). `***` keeps a stored secret."""

    enabled: bool
    settings: dict[str, JsonValue]


class PluginConfigOut(_Model):
    """A tenant's config of one plugin, secrets masked; `workers` says what a write did."""

    tenant_id: str
    plugin_id: str
    enabled: bool
    settings: dict[str, JsonValue]
    workers: Workers | None = None


class RegistryOut(_Model):
    """The curated registry, filtered by `?q=`."""

    providers: list[dict[str, Any]]


class InstallIn(_Model):
    """Install from a path on the server, or (when remote install is on) an https URL."""

    path: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InstallIn:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of path and url")
        return self


class InstalledOut(_Model):
    """A plugin as installed, and what happened to its activations' workers."""

    id: str
    version: str
    digest: str
    source: str
    signed_by: str | None
    installed_at: str
    workers: dict[str, Workers] = Field(description="per tenant whose activation moved to it")


class UninstalledOut(_Model):
    """What an uninstall removed."""

    id: str
    versions: list[str]
    deactivated_for: list[str]


class ActivationIn(_Model):
    """Which tenant to (de)activate for; null or absent means `global`."""

    tenant_id: str | None = None


class ActivationOut(_Model):
    """An activation after the change."""

    plugin_id: str
    tenant_id: str
    enabled: bool
    workers: Workers


class ActiveSchemas(_Model):
    """The schemas of every plugin enabled for a tenant, for `plugins.<id>.<field>` keys."""

    tenant_id: str
    plugins: dict[str, dict[str, Any]] = Field(description="each plugin's settings schema")
    settings_schema: dict[str, Any] = Field(
        description="one schema of the tenant's settings document: `plugins.<id>.<field>`"
    )


class WorkerOut(_Model):
    """One worker slot of an activation."""

    id: str = Field(description="`<tenant>:<plugin>:<instance>`")
    tenant_id: str
    plugin_id: str
    instance: int
    state: str = Field(
        description="`idle`: stopped after `CORRAL_WORKER_IDLE_SECONDS` without a call (not a "
        "failure); the next call starts a worker",
        json_schema_extra={"enum": [state.value for state in WorkerState]},
    )
    pid: int | None
    restarts: int
    last_exit: int | None
    last_error: str | None
    retry_after_s: float | None
    rss_bytes: int | None
    calls: int
    inflight: int


class WorkerList(_Model):
    """Every worker slot."""

    workers: list[WorkerOut]


class WorkerActionOut(_Model):
    """The slots a restart or circuit reset acted on."""

    action: Literal["restart", "reset_circuit"]
    workers: list[WorkerOut]


class KeyIn(_Model):
    """A key to create; a tenant key may act only on `tenant_id`."""

    name: str
    scopes: list[Scope]
    tenant_id: str | None = None


class KeyOut(_Model):
    """A key's record: never the key, never its hash."""

    id: str
    name: str
    scopes: list[Scope]
    tenant_id: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(_Model):
    """A new key: `key` is shown this once and never again."""

    key: str
    record: KeyOut


class KeyList(_Model):
    """The keys the caller may see."""

    keys: list[KeyOut]
