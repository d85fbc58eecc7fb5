"""What the admin API does, apart from HTTP: per-tenant plugin configs, activations, installs.

`Control` keeps the config store (what should run) and the supervisor (what runs) in step:
every change is written to the store first, then that (tenant, plugin)'s workers are reconciled
with it. At start-up `restore` starts every enabled activation the store holds. Writes hold
`writes` shared; a reload (`runner.reload`) holds it exclusively.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import jsonschema
import msgspec
from pydantic import JsonValue

from protocol import Manifest, config_schema

from .config_model import Activation, ConfigDocument
from .config_secrets import mask_settings, merge_settings
from .config_store import ConfigStore
from .control_errors import (
    NotAppliedError,
    PluginInUseError,
    PluginUnknownError,
    SettingsInvalidError,
)
from .host import Host
from .install_store import InstalledPlugin
from .supervisor import ActivationKey, ActivationSpec
from .write_gate import WriteGate, shared_write

DEFAULT_START_WAIT_S: Final = 10.0
_log = logging.getLogger(__name__)


class Workers(StrEnum):
    """What reconciling did to a (tenant, plugin)'s workers."""

    STARTED = "started"  # newly activated, and every worker answered
    STARTING = "starting"  # newly activated; workers still starting (or backing off)
    SWITCHED = "switched"  # new workers took over; the old ones drained
    UNCHANGED = "unchanged"  # already running this bundle and config
    STOPPED = "stopped"  # drained and stopped
    INACTIVE = "inactive"  # nothing runs, and nothing should


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """A tenant's config of one plugin as the API shows it: secrets masked."""

    tenant_id: str
    plugin_id: str
    enabled: bool
    settings: dict[str, JsonValue]
    etag: str


class Control:
    """The store and the host, kept in step. One per host process."""

    def __init__(
        self, host: Host, store: ConfigStore, *, start_wait_s: float = DEFAULT_START_WAIT_S
    ) -> None:
        self.host = host
        self.store = store
        self.start_wait_s = start_wait_s
        self._locks: dict[ActivationKey, asyncio.Lock] = {}
        self.writes = WriteGate()

    # -- reads ------------------------------------------------------------------------------

    def manifest(self, plugin_id: str) -> Manifest:
        """Return a loaded plugin's manifest; raise PluginUnknownError."""
        manifest = self.host.manifests.get(plugin_id)
        if manifest is None or plugin_id not in self.host.plugins:
            raise PluginUnknownError(plugin_id)
        return manifest

    async def plugins(self, tenant_id: str) -> list[dict[str, Any]]:
        """Return every loaded plugin with its manifest and the tenant's masked config."""
        snapshot = await self.store.peek()
        tenant = snapshot.document.tenants.get(tenant_id)
        listing = []
        for plugin_id, record in sorted(self.host.plugins.items()):
            manifest = self.host.manifests[plugin_id]
            activation = tenant.activation(plugin_id) if tenant else None
            stored = tenant.settings.plugins.get(plugin_id, {}) if tenant else {}
            listing.append(
                {
                    "id": plugin_id,
                    "name": manifest.display_name,
                    "version": record.version,
                    "type": manifest.categories[0].kind if manifest.categories else "",
                    "categories": [c.kind for c in manifest.categories],
                    "description": manifest.description,
                    "digest": record.digest,
                    "enabled": activation is not None and activation.enabled,
                    "settings": mask_settings(stored, manifest.secret_fields),
                    "settings_schema": config_schema(manifest),
                    "manifest": manifest_json(manifest),
                }
            )
        return listing

    async def config(self, tenant_id: str, plugin_id: str) -> PluginConfig:
        """Return the tenant's config of a plugin, masked, with its ETag."""
        manifest = self.manifest(plugin_id)
        snapshot = await self.store.peek()
        tenant = snapshot.document.tenants.get(tenant_id)
        activation = tenant.activation(plugin_id) if tenant else None
        stored = tenant.settings.plugins.get(plugin_id, {}) if tenant else {}
        return PluginConfig(
            tenant_id,
            plugin_id,
            activation is not None and activation.enabled,
            mask_settings(stored, manifest.secret_fields),
            snapshot.plugin_etag(tenant_id, plugin_id),
        )

    async def active_schemas(self, tenant_id: str) -> dict[str, dict[str, Any]]:
        """Return the config schema of every plugin enabled for the tenant, by plugin id."""
        snapshot = await self.store.peek()
        tenant = snapshot.document.tenants.get(tenant_id)
        activations = tenant.activations if tenant else []
        return {
            a.plugin_id: config_schema(self.host.manifests[a.plugin_id])
            for a in sorted(activations, key=lambda a: a.plugin_id)
            if a.enabled and a.plugin_id in self.host.plugins
        }

    # -- writes -----------------------------------------------------------------------------

    @shared_write
    async def put_config(
        self,
        tenant_id: str,
        plugin_id: str,
        *,
        enabled: bool,
        settings: Mapping[str, JsonValue],
        if_match: str | None = None,
    ) -> tuple[PluginConfig, Workers]:
        """Validate and store a tenant's config of a plugin, then switch its workers to it.

        `***` for a secret keeps the stored value. Raises ApiError (422, with a JSON path per
        problem) for settings the plugin's schema refuses, PreconditionFailedError when
        `if_match` is stale, and NotAppliedError when the new workers fail to start (the
        previous settings are then put back and keep serving).
        """
        manifest = self.manifest(plugin_id)
        current = await self.store.plugin_config(tenant_id, plugin_id)
        merged = merge_settings(current, settings, manifest.secret_fields)
        validate_settings(manifest, merged)
        previous: list[tuple[dict[str, JsonValue] | None, Activation | None]] = []

        def write(doc: ConfigDocument) -> ConfigDocument:
            tenant = doc.tenant(tenant_id)
            activation = tenant.activation(plugin_id)
            previous.append(
                (tenant.settings.plugins.get(plugin_id), activation and activation.model_copy())
            )
            tenant.settings.plugins[plugin_id] = merged
            _set_enabled(doc, tenant_id, plugin_id, enabled)
            return doc

        snapshot = await self.store.update(
            write, expected_etag=if_match, subtree=(tenant_id, plugin_id)
        )
        try:
            workers = await self.reconcile(tenant_id, plugin_id)
        except Exception as exc:
            await self._take_back(
                tenant_id, plugin_id, snapshot.plugin_etag(tenant_id, plugin_id), *previous[-1]
            )
            raise NotAppliedError(
                f"no worker of {plugin_id} started with the new settings; the previous "
                "settings were put back and keep serving"
            ) from exc
        return await self.config(tenant_id, plugin_id), workers

    @shared_write
    async def set_enabled(self, tenant_id: str, plugin_id: str, enabled: bool) -> Workers:
        """Activate (or deactivate) a plugin for a tenant, keeping its settings.

        Activating checks the stored settings against the plugin's schema first (422).
        """
        manifest = self.manifest(plugin_id)
        if enabled:
            validate_settings(manifest, await self.store.plugin_config(tenant_id, plugin_id))

        def write(doc: ConfigDocument) -> ConfigDocument:
            _set_enabled(doc, tenant_id, plugin_id, enabled)
            return doc

        await self.store.update(write)
        return await self.reconcile(tenant_id, plugin_id)

    @shared_write
    async def install(
        self, source: str | Path, *, uploaded: bool = False
    ) -> tuple[InstalledPlugin, dict[str, Workers]]:
        """Install and load a bundle, then move the plugin's activations to it, per tenant.

        `uploaded`: the archive came over the API, so its checksums line is found by content.
        """
        record = await self.host.install(source, uploaded=uploaded)
        tenants = await self._tenants_with(record.plugin_id, enabled_only=True)
        outcomes = {t: await self._reconcile_quietly(t, record.plugin_id) for t in tenants}
        return record, outcomes

    @shared_write
    async def uninstall(
        self, plugin_id: str, *, force: bool = False
    ) -> tuple[list[str], list[InstalledPlugin]]:
        """Uninstall every version of a plugin; return whom it was deactivated for, and what went.

        Refused with PluginInUseError while enabled activations exist, unless `force`: then
        they are removed from the store and their workers drained and stopped first.
        """
        tenants = await self._tenants_with(plugin_id, enabled_only=True)
        if tenants and not force:
            raise PluginInUseError(plugin_id, tenants)

        def write(doc: ConfigDocument) -> ConfigDocument:
            for tenant in doc.tenants.values():
                tenant.activations = [a for a in tenant.activations if a.plugin_id != plugin_id]
            return doc

        if tenants:
            await self.store.update(write)
        for key in [s.key for s in self._running(plugin_id)]:
            await self.reconcile(key.tenant_id, key.plugin_id)
        removed = await self.host.uninstall(plugin_id)
        return tenants, removed

    # -- workers ----------------------------------------------------------------------------

    async def restore(self) -> int:
        """Start every enabled activation in the store (without waiting); return how many."""
        snapshot = await self.store.peek()
        started = 0
        for tenant_id, tenant in sorted(snapshot.document.tenants.items()):
            for activation in tenant.activations:
                if not activation.enabled:
                    continue
                if activation.plugin_id not in self.host.plugins:
                    _log.error(
                        "cannot restore %s for %s: the plugin is not installed or failed "
                        "verification",
                        activation.plugin_id,
                        tenant_id,
                    )
                    continue
                await self._reconcile_quietly(tenant_id, activation.plugin_id, wait=False)
                started += 1
        return started

    async def reconcile(self, tenant_id: str, plugin_id: str, *, wait: bool = True) -> Workers:
        """Make the (tenant, plugin)'s workers match the store: start, switch or stop them.

        Raises what a worker start raises when switching; the old workers then keep serving.
        """
        key = ActivationKey(tenant_id, plugin_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            spec = await self.desired_spec(tenant_id, plugin_id)
            supervisor = self.host.supervisor
            running = supervisor.spec_of(key)
            if spec is None:
                if running is None:
                    return Workers.INACTIVE
                await supervisor.deactivate(key)
                return Workers.STOPPED
            if running is not None and running.instances != spec.instances:
                await supervisor.deactivate(key)  # a new version with another shape
                running = None
            if running is None:
                wait_s = self.start_wait_s if wait else 0.0
                ready = await supervisor.activate(spec, wait_s=wait_s)
                return Workers.STARTED if ready else Workers.STARTING
            if (
                running.bundle_dir == spec.bundle_dir
                and running.config_digest == spec.config_digest
            ):
                return Workers.UNCHANGED
            await supervisor.reconfigure(spec)
            return Workers.SWITCHED

    async def stop_workers(self, tenant_id: str, plugin_id: str) -> Workers:
        """Drain and stop the (tenant, plugin)'s workers whatever the store says (a reload does
        this when their bundle no longer verifies and no new one can start); keep the store."""
        key = ActivationKey(tenant_id, plugin_id)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self.host.supervisor.spec_of(key) is None:
                return Workers.INACTIVE
            await self.host.supervisor.deactivate(key)
            return Workers.STOPPED

    async def desired_spec(self, tenant_id: str, plugin_id: str) -> ActivationSpec | None:
        """Return the spec the store asks (tenant, plugin) to run, or None if nothing should run.

        None when there is no enabled activation, or the plugin is not loaded (refused). Raises
        SecretKeyError when a stored secret does not decrypt.
        """
        snapshot = await self.store.peek()
        tenant = snapshot.document.tenants.get(tenant_id)
        activation = tenant.activation(plugin_id) if tenant else None
        if activation is None or not activation.enabled or plugin_id not in self.host.plugins:
            return None
        config = await self.store.plugin_config(tenant_id, plugin_id)
        return self.host.activation_spec(tenant_id, plugin_id, config)

    async def _reconcile_quietly(
        self, tenant_id: str, plugin_id: str, *, wait: bool = True
    ) -> Workers:
        try:
            return await self.reconcile(tenant_id, plugin_id, wait=wait)
        except Exception:
            _log.exception("could not switch the workers of %s for %s", plugin_id, tenant_id)
            return Workers.UNCHANGED

    def _running(self, plugin_id: str) -> list[ActivationSpec]:
        return [
            s
            for s in (self.host.supervisor.spec_of(k) for k in self.host.supervisor.active_keys())
            if s is not None and s.plugin_id == plugin_id
        ]

    async def _tenants_with(self, plugin_id: str, *, enabled_only: bool) -> list[str]:
        snapshot = await self.store.peek()
        return sorted(
            tenant_id
            for tenant_id, tenant in snapshot.document.tenants.items()
            if (a := tenant.activation(plugin_id)) is not None and (a.enabled or not enabled_only)
        )

    async def _take_back(
        self,
        tenant_id: str,
        plugin_id: str,
        etag: str,
        settings: dict[str, JsonValue] | None,
        activation: Activation | None,
    ) -> None:
        def restore(doc: ConfigDocument) -> ConfigDocument:
            tenant = doc.tenant(tenant_id)
            if settings is None:
                tenant.settings.plugins.pop(plugin_id, None)
            else:
                tenant.settings.plugins[plugin_id] = settings
            tenant.activations = [a for a in tenant.activations if a.plugin_id != plugin_id]
            if activation is not None:
                tenant.activations.append(activation)
            return doc

        try:
            await self.store.update(restore, expected_etag=etag, subtree=(tenant_id, plugin_id))
        except Exception:
            _log.exception(
                "could not put back the previous settings of %s for %s", plugin_id, tenant_id
            )


def validate_settings(manifest: Manifest, settings: Mapping[str, JsonValue]) -> None:
    """Check settings against the plugin's JSON Schema; raise SettingsInvalidError with all."""
    schema = config_schema(manifest)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    problems: list[tuple[str, str]] = []
    for error in validator.iter_errors(dict(settings)):
        for problem in _problems(error):
            if problem not in problems:
                problems.append(problem)
    if problems:
        raise SettingsInvalidError(manifest.id, sorted(problems))


def _problems(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """Name the path and the rule broken, never the value (it may be a secret)."""
    if error.validator == "required" and isinstance(error.instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [n for n in required if n not in error.instance]
        return [(f"{error.json_path}.{name}", "is required") for name in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        return [
            (f"{error.json_path}.{n}", "is not a setting") for n in error.instance if n not in known
        ]
    rule = json.dumps(error.validator_value, default=str)[:100]
    return [(error.json_path, f"does not satisfy {error.validator} {rule}")]


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """Return the manifest as JSON-ready data."""
    data: dict[str, Any] = msgspec.to_builtins(manifest)
    return data


def _set_enabled(doc: ConfigDocument, tenant_id: str, plugin_id: str, enabled: bool) -> None:
    tenant = doc.tenant(tenant_id)
    activation = tenant.activation(plugin_id)
    if activation is None:
        tenant.activations.append(
            Activation(plugin_id=plugin_id, enabled=enabled, activated_at=datetime.now(UTC))
        )
    elif activation.enabled != enabled:
        activation.enabled = enabled
        if enabled:
            activation.activated_at = datetime.now(UTC)
