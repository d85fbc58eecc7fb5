"""The host's core, composed: verified plugins, the sandbox, the spawner and the supervisor.

`Host.start` installs the shipped bundles (through the same checks as any install), re-verifies
every installed plugin, probes the sandbox, and then activates plugins per tenant on request.
Every worker start re-checks its bundle's digest first; `reload_trust` re-reads the trust files
later (SIGHUP). The HTTP layer sits on top of this.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import msgspec

from protocol import (
    HTTP_REQUEST_METHOD,
    ErrorCode,
    HttpRequest,
    HttpResponse,
    Manifest,
    RemoteError,
    load_manifest,
)
from protocol.endpoint import Handler
from sandbox import Mode, ResourceLimits

from .allowlist import load_allowlist
from .audit import AuditLog
from .bundles import discover
from .checksums import load_checksums
from .dispatch import Dispatcher
from .egress import EgressBroker
from .egress_audit import audit_log_sink
from .egress_errors import EgressError, to_remote_error
from .egress_settings import EgressSettings
from .errors import RunnerError, WorkerStartError
from .install import Installer, InstallSettings
from .install_errors import InstallError
from .install_remote import profile_from_env, remote_install_enabled
from .install_store import InstalledPlugin
from .install_verify import PluginStatus
from .launcher import WorkerLauncher
from .restart_policy import RestartSettings
from .sandboxing import SandboxSettings, WorkerSandbox
from .slot_types import WatchSettings
from .spawn import ForkServerSpawner
from .supervisor import GLOBAL, ActivationKey, ActivationSpec, Supervisor
from .worker import PluginWorker

HIPAA: Final = "hipaa"
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_log = logging.getLogger(__name__)


class PluginNotInstalledError(RunnerError):
    """The plugin is not installed, or it failed verification and was not loaded."""


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Where the host keeps its state, what it trusts, and how it confines workers."""

    state_dir: Path
    allowlist_path: Path = REPO_ROOT / "allowlist.toml"
    checksums_path: Path = REPO_ROOT / "checksums.txt"
    shipped_plugins_dir: Path | None = REPO_ROOT / "plugins"
    profile: str = "default"
    remote_install: bool = False
    sandbox_mode: Mode = Mode.STRICT
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    watch: WatchSettings = field(default_factory=WatchSettings)
    restart: RestartSettings = field(default_factory=RestartSettings)
    egress: EgressSettings = field(default_factory=EgressSettings)

    @property
    def is_hipaa(self) -> bool:
        """Whether the HIPAA profile is in force (strict sandbox, no remote install)."""
        return self.profile == HIPAA

    @classmethod
    def from_env(cls, state_dir: Path, environ: Mapping[str, str] = os.environ) -> HostSettings:
        """Read `CORRAL_PROFILE`, `CORRAL_PLUGIN_INSTALL` and `CORRAL_SANDBOX_MODE`."""
        mode = Mode(environ.get("CORRAL_SANDBOX_MODE", Mode.STRICT.value).strip().lower())
        return cls(
            state_dir=state_dir,
            profile=profile_from_env(environ),
            remote_install=remote_install_enabled(environ),
            sandbox_mode=mode,
            egress=EgressSettings.from_env(environ),
        )


@dataclass(frozen=True, slots=True)
class TrustReload:
    """What `Host.reload_trust` changed: plugin ids loaded (or at another version), unloaded."""

    loaded: tuple[str, ...] = ()
    unloaded: tuple[str, ...] = ()


class Host:
    """Verified plugins plus supervised, sandboxed workers. Build with `await Host.start()`."""

    def __init__(
        self,
        settings: HostSettings,
        installer: Installer,
        sandbox: WorkerSandbox,
        spawner: ForkServerSpawner,
        statuses: list[PluginStatus],
        manifests: Mapping[str, Manifest],
        egress: EgressBroker,
    ) -> None:
        self.settings = settings
        self.installer = installer
        self.sandbox = sandbox
        self.spawner = spawner
        self.statuses = statuses
        self.plugins: dict[str, InstalledPlugin] = _loadable(statuses, {})
        self.manifests = dict(manifests)
        self.egress = egress
        self.launcher = WorkerLauncher(sandbox, spawner)
        self.supervisor = Supervisor(
            self._start_worker, watch=settings.watch, restart=settings.restart
        )
        self.dispatcher = Dispatcher(self.supervisor)

    @classmethod
    async def start(cls, settings: HostSettings, *, audit: AuditLog | None = None) -> Host:
        """Load trust files, install shipped bundles, verify the store, open the sandbox.

        Raises InstallError-derived or sandbox errors when the host cannot run safely: an invalid
        allowlist or checksums file, or (strict mode) a missing confinement layer.
        """
        if settings.is_hipaa and settings.sandbox_mode is not Mode.STRICT:
            _log.warning("the HIPAA profile forces strict sandboxing")
        mode = Mode.STRICT if settings.is_hipaa else settings.sandbox_mode
        installer = Installer(
            InstallSettings(
                store_dir=settings.state_dir / "store",
                allowlist=load_allowlist(settings.allowlist_path),
                checksums=load_checksums(settings.checksums_path),
                profile=settings.profile,
                remote_install=settings.remote_install and not settings.is_hipaa,
            )
        )
        if settings.shipped_plugins_dir is not None:
            await _install_shipped(installer, settings.shipped_plugins_dir)
        statuses = await installer.verify_installed()
        for status in statuses:
            if not status.is_ok:
                _log.error(
                    "plugin %s %s is %s and will not be loaded: %s",
                    status.record.plugin_id,
                    status.record.version,
                    status.status,
                    status.detail,
                )
        sandbox = await WorkerSandbox.open(
            SandboxSettings(
                state_dir=settings.state_dir,
                mode=mode,
                limits=settings.limits,
                trusted_bundle_root=settings.state_dir / "store",
            )
        )
        spawner = ForkServerSpawner(sys_path=sandbox.sys_path)
        ok = [s for s in statuses if s.is_ok]
        manifests = await asyncio.to_thread(
            lambda: {s.record.plugin_id: load_manifest(s.path) for s in ok}
        )
        egress = EgressBroker(settings.egress, audit_log_sink(audit) if audit else None)
        return cls(settings, installer, sandbox, spawner, statuses, manifests, egress)

    async def reload_trust(self) -> TrustReload:
        """Re-read allowlist.toml and checksums.txt; load exactly the plugins that verify now.

        As at start-up: the shipped bundles are installed again under the new files, then every
        installed plugin is re-verified. A loaded plugin whose record still verifies stays as it
        is; one that no longer does is unloaded (its activations cannot start; `statuses` lists
        it as refused); one that now verifies is loaded. `plugins`, `manifests` and `statuses`
        change in place, all at once at the end. Workers are not touched: the caller reconciles
        them (`Control.reconcile`). Raises AllowlistError or ChecksumsError when a file is
        invalid, RecordsError when the store's index is: then nothing has changed.
        """
        paths = (self.settings.allowlist_path, self.settings.checksums_path)
        allowlist = await asyncio.to_thread(load_allowlist, paths[0])
        checksums = await asyncio.to_thread(load_checksums, paths[1])
        previous = self.installer.settings
        self.installer.settings = replace(previous, allowlist=allowlist, checksums=checksums)
        try:
            if self.settings.shipped_plugins_dir is not None:
                await _install_shipped(self.installer, self.settings.shipped_plugins_dir)
            return await self.refresh_plugins()
        except BaseException:
            self.installer.settings = previous
            raise

    async def refresh_plugins(self) -> TrustReload:
        """Re-verify every installed plugin and load exactly those that verify now.

        `reload_trust` without re-reading the trust files or installing the shipped bundles:
        what a host does when another host installed or uninstalled a plugin. Workers are not
        touched. Raises RecordsError when the store's index is invalid (nothing changed).
        """
        statuses = await self.installer.verify_installed()
        chosen = _loadable(statuses, self.plugins)
        changed = sorted(i for i, r in chosen.items() if not _same(self.plugins.get(i), r))
        bundles = {i: self.installer.path_of(chosen[i]) for i in changed}
        manifests = await asyncio.to_thread(
            lambda: {i: load_manifest(path) for i, path in bundles.items()}
        )
        unloaded = sorted(set(self.plugins) - set(chosen))
        for plugin_id in unloaded:
            del self.plugins[plugin_id]
            self.manifests.pop(plugin_id, None)
        self.plugins.update(chosen)  # unchanged ones too: a re-install renews the record
        self.manifests.update(manifests)
        self.statuses = statuses
        return TrustReload(tuple(changed), tuple(unloaded))

    async def _start_worker(self, spec: ActivationSpec) -> PluginWorker:
        record = self.plugins.get(spec.plugin_id)
        if record is None:
            raise WorkerStartError(spec.plugin_id, "not installed or not verified")
        try:
            bundle = await self.installer.verify_for_spawn(record)  # a swapped file shows here
        except InstallError as exc:
            _log.error("refusing to start %s: %s", spec.plugin_id, exc)
            raise WorkerStartError(spec.plugin_id, f"verification failed: {exc.reason}") from exc
        return await self.launcher.start(
            plugin_id=spec.plugin_id,
            tenant_id=spec.tenant_id,
            bundle_dir=bundle,
            config=spec.config,
            config_digest=spec.config_digest,
            host_functions={HTTP_REQUEST_METHOD: self._egress_for(spec)},
            scrub=spec.scrub,
        )

    def _egress_for(self, spec: ActivationSpec) -> Handler:
        """Return the `http.request` host function of one activation's workers."""
        tenant_id, plugin_id, manifest = spec.tenant_id, spec.plugin_id, spec.manifest

        async def http_request(params: Any) -> HttpResponse:
            try:
                request = msgspec.convert(params, HttpRequest)
            except msgspec.ValidationError as exc:
                raise RemoteError(ErrorCode.INVALID_PARAMS, f"http.request: {exc}") from None
            try:
                return await self.egress.request(
                    tenant_id=tenant_id, plugin_id=plugin_id, permissions=manifest, request=request
                )
            except EgressError as exc:
                raise to_remote_error(exc) from exc

        return http_request

    async def install(self, source: str | Path, *, uploaded: bool = False) -> InstalledPlugin:
        """Install a bundle (every check applies) and load it; return its record.

        A new version of an installed plugin replaces the loaded one; running activations keep
        their workers until they are switched (`Control` does that). Raises InstallError.
        """
        record = await self.installer.install(source, uploaded=uploaded)
        await self.load(record)
        return record

    async def load(self, record: InstalledPlugin) -> None:
        """Verify an installed record and serve it from now on; raise InstallError if it fails."""
        bundle = await self.installer.verify_for_spawn(record)
        manifest = await asyncio.to_thread(load_manifest, bundle)
        self.manifests[record.plugin_id] = manifest
        self.plugins[record.plugin_id] = record

    async def uninstall(self, plugin_id: str) -> list[InstalledPlugin]:
        """Stop serving a plugin and remove every installed version; stop its workers first.

        Raises InstallError when nothing is installed under that id.
        """
        self.plugins.pop(plugin_id, None)
        self.manifests.pop(plugin_id, None)
        return await self.installer.uninstall(plugin_id)

    def secret_fields(self, plugin_id: str) -> frozenset[str]:
        """Return the names of a loaded plugin's secret config fields (none if not loaded)."""
        manifest = self.manifests.get(plugin_id)
        return manifest.secret_fields if manifest is not None else frozenset()

    def activation_spec(
        self, tenant_id: str, plugin_id: str, config: Mapping[str, Any] | None = None
    ) -> ActivationSpec:
        """Build the spec of (tenant, plugin) from the verified store; raise if not loaded."""
        record = self.plugins.get(plugin_id)
        if record is None:
            raise PluginNotInstalledError(f"{plugin_id} is not installed (or failed verification)")
        bundle = self.installer.path_of(record)
        manifest = self.manifests[plugin_id]
        return ActivationSpec(tenant_id, plugin_id, bundle, manifest, dict(config or {}))

    async def activate(
        self,
        tenant_id: str,
        plugin_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        wait_s: float = 10.0,
    ) -> bool:
        """Activate a plugin for a tenant (or `global`); return whether its workers are ready."""
        return await self.supervisor.activate(
            self.activation_spec(tenant_id, plugin_id, config), wait_s=wait_s
        )

    async def reconfigure(self, tenant_id: str, plugin_id: str, config: Mapping[str, Any]) -> None:
        """Switch an activation to a new config (drain and switch; old keeps serving on failure)."""
        await self.supervisor.reconfigure(self.activation_spec(tenant_id, plugin_id, config))

    async def deactivate(self, tenant_id: str, plugin_id: str) -> None:
        """Stop that tenant's workers of the plugin; other tenants' are untouched."""
        await self.supervisor.deactivate(ActivationKey(tenant_id, plugin_id))

    async def close(self) -> None:
        """Stop every worker (drain, SIGTERM, SIGKILL, reap), the fork-server, and the sandbox."""
        try:
            await self.supervisor.close()
            await self.spawner.close()
            await self.egress.close()
        finally:
            self.sandbox.close()


def _loadable(
    statuses: list[PluginStatus], current: Mapping[str, InstalledPlugin]
) -> dict[str, InstalledPlugin]:
    """Return the record to load per plugin id: a `current` one that still verifies, else the
    last verified one in record order (as at start-up)."""
    ok = [s.record for s in statuses if s.is_ok]
    chosen = {r.plugin_id: r for r in ok}
    chosen.update({r.plugin_id: r for r in ok if _same(current.get(r.plugin_id), r)})
    return chosen


def _same(loaded: InstalledPlugin | None, record: InstalledPlugin) -> bool:
    """Whether `record` is the bundle loaded (a re-install changes only its install time)."""
    return loaded is not None and (loaded.version, loaded.digest) == (record.version, record.digest)


async def _install_shipped(installer: Installer, plugins_dir: Path) -> None:
    """Install the bundles shipped in `plugins_dir`, through the same checks as any install."""
    bundles, problems = discover(plugins_dir)
    for problem in problems:
        _log.error("shipped bundle %s is invalid: %s", problem.path, problem.error)
    for bundle in bundles:
        try:
            await installer.install(bundle.path)
        except InstallError as exc:
            _log.error("shipped bundle %s refused: %s", bundle.path, exc)


__all__ = ["GLOBAL", "Host", "HostSettings", "PluginNotInstalledError", "TrustReload"]
