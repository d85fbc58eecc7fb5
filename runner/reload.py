"""A reload (SIGHUP): re-read the trust files, the registry and the config document, and apply them.

Each part keeps its old state when its new file is invalid, and the report says why; the others
still apply. Workers change only where the running state no longer matches what the store and the
verified plugins ask for, by the API's drain-and-switch (`Control.reconcile`). The whole reload
holds `Control.writes` exclusively, so no API write interleaves. docs/admin-api.md ("Reload
(SIGHUP)") states the semantics; catching the signal is the daemon's job. `reconcile_drifted` is
also how a host follows another host's changes (`runner.pg.follower`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol

from .audit import AuditLog, Scalar
from .config_errors import ConfigError
from .config_snapshot import ConfigSnapshot
from .control import Control, Workers, validate_settings
from .control_errors import SettingsInvalidError
from .errors import RunnerError
from .registry import Registry, RegistryError, load_registry
from .supervisor import ActivationKey, ActivationSpec

Part = Literal["reread", "kept"]
RegistryOutcome = Literal["replaced", "unchanged", "kept"]
_REASON_CHARS: Final = 300
_log = logging.getLogger(__name__)


class RereadableStore(Protocol):
    """What a reload needs of the config store: read the document afresh (both stores can)."""

    async def reread(self) -> ConfigSnapshot:
        """Re-read the document, refusing (ConfigError) one that does not parse or decrypt."""
        ...


@dataclass(frozen=True, slots=True)
class ActivationChange:
    """One (tenant, plugin) whose workers the reload started, switched or stopped."""

    tenant_id: str
    plugin_id: str
    workers: Workers


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did. `problems` name a file or activation and why, never a value."""

    trust: Part = "reread"  # allowlist.toml and checksums.txt; "kept" when one was invalid
    loaded: tuple[str, ...] = ()  # plugin ids now verified and loaded (or another version)
    unloaded: tuple[str, ...] = ()  # plugin ids no longer verified: their workers stopped
    registry: RegistryOutcome = "unchanged"
    registry_reason: str = ""  # why the registry was kept
    config: Part = "reread"  # the config document; "kept" when the file was invalid
    activations: tuple[ActivationChange, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every part applied without a problem."""
        return not self.problems

    def workers_of(self, tenant_id: str, plugin_id: str) -> Workers | None:
        """Return what the reload did to (tenant, plugin)'s workers; None if it left them."""
        return next(
            (
                a.workers
                for a in self.activations
                if (a.tenant_id, a.plugin_id) == (tenant_id, plugin_id)
            ),
            None,
        )

    def summary(self) -> str:
        """Return one log line: what changed, and each problem."""
        parts = [
            f"trust files {self.trust}",
            f"loaded {len(self.loaded)} ({', '.join(self.loaded) or '-'})",
            f"unloaded {len(self.unloaded)} ({', '.join(self.unloaded) or '-'})",
            f"registry {self.registry}",
            f"config {self.config}",
            f"{len(self.activations)} activation(s) changed",
        ]
        line = "reload: " + "; ".join(parts)
        return line + "".join(f"; problem: {p}" for p in self.problems)

    def audit_details(self) -> dict[str, Scalar]:
        """Return the counts and outcomes for the `host.reload` audit event (no ids, no values)."""
        return {
            "trust": self.trust,
            "loaded": len(self.loaded),
            "unloaded": len(self.unloaded),
            "registry": self.registry,
            "config": self.config,
            "activations": len(self.activations),
            "problems": len(self.problems),
        }


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What `reconcile_drifted` did: the activations it changed, and why others were not."""

    activations: tuple[ActivationChange, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass
class _Draft:
    trust: Part = "reread"
    loaded: tuple[str, ...] = ()
    unloaded: tuple[str, ...] = ()
    registry: RegistryOutcome = "unchanged"
    registry_reason: str = ""
    config: Part = "reread"
    activations: list[ActivationChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def report(self) -> ReloadReport:
        return ReloadReport(
            self.trust,
            self.loaded,
            self.unloaded,
            self.registry,
            self.registry_reason,
            self.config,
            tuple(self.activations),
            tuple(self.problems),
        )


async def reload(
    control: Control,
    store: RereadableStore,
    registry: Registry,
    registry_path: Path,
    audit: AuditLog | None,
) -> ReloadReport:
    """Re-read everything from disk, apply what is valid, audit it as `host.reload`, report it.

    Waits for API writes in flight to finish and keeps new ones waiting until it is done. Each
    worker switch is bounded as the API's are. Raises only what it cannot report (an audit log
    that cannot be written, cancellation).
    """
    draft = _Draft()
    async with control.writes.exclusive():
        await _reload_trust(control, draft)
        await _reload_registry(registry, registry_path, draft)
        await _reread_config(store, draft)
        # With the config kept, only the activations of plugins loaded or unloaded are looked
        # at: the store may already serve a hand edit that parses but does not decrypt.
        only = None if draft.config == "reread" else {*draft.loaded, *draft.unloaded}
        done = await reconcile_drifted(control, plugins=only)
        draft.activations.extend(done.activations)
        draft.problems.extend(done.problems)
    report = draft.report()
    if audit is not None:
        await audit.record(
            "host.reload",
            outcome="success" if report.ok else "failure",
            details=report.audit_details(),
        )
    return report


async def _reload_trust(control: Control, draft: _Draft) -> None:
    try:
        change = await control.host.reload_trust()
    except (RunnerError, OSError) as exc:
        draft.trust = "kept"
        draft.problems.append(f"plugins unchanged: {_short(exc)}")
        return
    draft.loaded, draft.unloaded = change.loaded, change.unloaded


async def _reload_registry(registry: Registry, path: Path, draft: _Draft) -> None:
    try:
        new = await asyncio.to_thread(load_registry, path)
    except RegistryError as exc:
        draft.registry, draft.registry_reason = "kept", _short(exc)
        draft.problems.append(f"registry kept: {draft.registry_reason}")
        return
    draft.registry = "replaced" if registry.replace_with(new) else "unchanged"


async def _reread_config(store: RereadableStore, draft: _Draft) -> None:
    try:
        await store.reread()
    except (ConfigError, OSError) as exc:
        draft.config = "kept"
        draft.problems.append(
            f"config document kept: {_short(exc)}; the running workers keep their settings"
        )


async def reconcile_drifted(
    control: Control, *, plugins: Collection[str] | None = None
) -> Reconciled:
    """Reconcile every (tenant, plugin) whose running spec differs from the store's; skip others.

    Looks at every activation the document lists or that runs, or only at those of `plugins`.
    Each is switched as a `PUT` switches it (`Control.reconcile`); settings the schema refuses
    or workers that fail to start leave the old workers serving (a problem is reported), unless
    their bundle no longer verifies: then they are stopped. The caller holds `control.writes`.
    """
    snapshot = await control.store.peek()
    keys = set(control.host.supervisor.active_keys())
    for tenant_id, tenant in snapshot.document.tenants.items():
        keys.update(ActivationKey(tenant_id, a.plugin_id) for a in tenant.activations)
    activations: list[ActivationChange] = []
    problems: list[str] = []
    for key in sorted(keys):
        if plugins is None or key.plugin_id in plugins:
            await _reconcile_one(control, key, activations, problems)
    return Reconciled(tuple(activations), tuple(problems))


async def _reconcile_one(
    control: Control,
    key: ActivationKey,
    activations: list[ActivationChange],
    problems: list[str],
) -> None:
    """Bring one activation in line, or say why not; a refused new state keeps the old workers,
    unless their bundle no longer verifies: then they are stopped."""
    where = f"{key.plugin_id} for {key.tenant_id}"
    running = control.host.supervisor.spec_of(key)
    try:
        desired = await control.desired_spec(key.tenant_id, key.plugin_id)
        if _same(desired, running):
            return
        if desired is not None:
            validate_settings(desired.manifest, desired.config)
        workers = await control.reconcile(key.tenant_id, key.plugin_id)
    except SettingsInvalidError as exc:
        paths = ", ".join(f"{path} {rule}" for path, rule in exc.problems)
        reason = f"the settings do not fit its schema ({paths})"
    except Exception as exc:  # a worker start failed, or a secret does not decrypt
        _log.warning("could not switch the workers of %s", where, exc_info=True)
        reason = _short(exc)
    else:
        if workers not in (Workers.UNCHANGED, Workers.INACTIVE):
            activations.append(ActivationChange(key.tenant_id, key.plugin_id, workers))
        return
    if running is None or running.bundle_dir in _verified_bundles(control):
        problems.append(f"{where} not applied: {reason}; the old workers keep serving")
        return
    await control.stop_workers(key.tenant_id, key.plugin_id)
    activations.append(ActivationChange(key.tenant_id, key.plugin_id, Workers.STOPPED))
    problems.append(f"{where} stopped: its bundle no longer verifies and {reason}")


def _verified_bundles(control: Control) -> set[Path]:
    host = control.host
    records = [*host.plugins.values(), *(s.record for s in host.statuses if s.is_ok)]
    return {host.installer.path_of(r) for r in records}


def _same(desired: ActivationSpec | None, running: ActivationSpec | None) -> bool:
    if desired is None or running is None:
        return desired is running
    return (desired.bundle_dir, desired.config_digest) == (
        running.bundle_dir,
        running.config_digest,
    )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


__all__ = [
    "ActivationChange",
    "Reconciled",
    "ReloadReport",
    "RereadableStore",
    "reconcile_drifted",
    "reload",
]
