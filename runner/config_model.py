"""The config document: tenants with their settings and activations, API keys, feature flags.

One pydantic model per part, unknown keys rejected (except inside a tenant's free-form settings).
Parsing a stored document goes through `parse_document`, which also upgrades older schema
versions; where the document lives and how it is written is the store's business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .config_errors import ConfigInvalidError

SCHEMA_VERSION: Final = 1

TENANT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]
PluginId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
PluginSettings = dict[str, JsonValue]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Activation(_Model):
    """One plugin activated for a tenant (or `global`); `enabled=False` keeps it but stops it."""

    plugin_id: PluginId
    enabled: bool = True
    activated_at: AwareDatetime | None = None


class TenantSettings(BaseModel):
    """A tenant's settings document; each plugin's config sits under `plugins.<plugin_id>`.

    Other top-level keys are the tenant's own (branding and the like) and are kept as they are:
    this is the one model that allows extra keys, because it is a free-form document.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    plugins: dict[PluginId, PluginSettings] = Field(default_factory=dict)


class Tenant(_Model):
    """A tenant's settings and its activations (at most one per plugin)."""

    settings: TenantSettings = Field(default_factory=TenantSettings)
    activations: list[Activation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_activation_per_plugin(self) -> Tenant:
        ids = [a.plugin_id for a in self.activations]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"plugins activated twice: {', '.join(duplicates)}")
        return self

    def activation(self, plugin_id: str) -> Activation | None:
        """Return the activation of `plugin_id`, or None."""
        return next((a for a in self.activations if a.plugin_id == plugin_id), None)


class ApiKeyRecord(_Model):
    """An API key as stored: its hash only (`sha256:<hex>`, `runner.auth.hash_key`), never the key.

    `tenant_id` None means operator-wide; a key bound to a tenant sees only that tenant.
    """

    id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    hash: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
    scopes: list[str] = Field(default_factory=list)
    tenant_id: TenantId | None = None
    created_at: AwareDatetime
    revoked_at: AwareDatetime | None = None

    @property
    def is_active(self) -> bool:
        """Whether the key has not been revoked."""
        return self.revoked_at is None


class Features(_Model):
    """Feature flags; the environment may override them (see `config_settings`)."""

    v3_plugins: bool = True
    plugin_install: bool = False


class ConfigDocument(_Model):
    """The whole configuration document, as stored (secret values encrypted)."""

    version: int = SCHEMA_VERSION
    tenants: dict[TenantId, Tenant] = Field(default_factory=dict)
    api_keys: list[ApiKeyRecord] = Field(default_factory=list)
    features: Features = Field(default_factory=Features)

    @model_validator(mode="after")
    def _check(self) -> ConfigDocument:
        if self.version != SCHEMA_VERSION:
            raise ValueError(f"version {self.version} is not {SCHEMA_VERSION}")
        ids = [k.id for k in self.api_keys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"API key ids used twice: {', '.join(duplicates)}")
        return self

    def tenant(self, tenant_id: str) -> Tenant:
        """Return the tenant `tenant_id`, adding an empty one if it does not exist yet."""
        return self.tenants.setdefault(tenant_id, Tenant())


# Upgrades from version N to N+1, applied in order to a raw document before validation.
# Version 1 is the first, so there are none yet; add `MIGRATIONS[1] = _v1_to_v2` when needed.
Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: Final[dict[int, Migration]] = {}


def parse_document(raw: object, source: str) -> ConfigDocument:
    """Validate a decoded JSON value as a document, upgrading an older schema version first.

    Raises ConfigInvalidError listing every problem with its path, also for a document written
    by a newer corral (a version this one does not know).
    """
    if not isinstance(raw, dict):
        raise ConfigInvalidError(source, [f"$: expected an object, got {type(raw).__name__}"])
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigInvalidError(source, [f"$.version: expected a positive integer: {version!r}"])
    if version > SCHEMA_VERSION:
        raise ConfigInvalidError(
            source, [f"$.version: {version} is newer than this corral understands"]
        )
    while version < SCHEMA_VERSION:
        raw = MIGRATIONS[version](raw)
        version += 1
    try:
        return ConfigDocument.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc)
    # Raised outside the handler, so that pydantic's error (which quotes input values, maybe
    # secrets) is neither the cause nor the context of ours.
    raise ConfigInvalidError(source, problems)


def validation_problems(exc: ValidationError) -> list[str]:
    """Return pydantic's errors as `<json path>: <message>` lines."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path = "$"
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        problems.append(f"{path}: {error['msg']}")
    return problems


def default_document() -> ConfigDocument:
    """Return the document of a fresh install: no tenants, no keys, default features."""
    return ConfigDocument()
