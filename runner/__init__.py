"""The host: install and verification, the sandbox's host side, spawners, supervisor, dispatch,
the aiohttp app and the CLI.

It composes `protocol` (the wire) and `sandbox` (confinement); they know nothing of each other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .dispatch import Dispatcher, DispatchError, DispatchResult, NoProviderError
    from .egress import EgressBroker
    from .egress_audit import EgressEvent, audit_log_sink
    from .egress_errors import (
        EgressDeniedError,
        EgressError,
        EgressFailedError,
        EgressReason,
        EgressSettingsError,
        to_remote_error,
    )
    from .egress_settings import EgressSettings, HostOverride
    from .errors import RunnerError, WorkerStartError
    from .host import Host, HostSettings, PluginNotInstalledError
    from .install import Installer, InstallSettings
    from .install_errors import InstallError
    from .launcher import WorkerLauncher
    from .restart_policy import RestartSettings
    from .sandboxing import SandboxSettings, SandboxUnavailableError, WorkerSandbox
    from .slot_types import CircuitOpenError, UnavailableError, WatchSettings, WorkerState
    from .spawn import ColdSpawner, ForkServerSpawner, LaunchRequest, unconfined
    from .supervisor import (
        GLOBAL,
        ActivationKey,
        ActivationNotFoundError,
        ActivationSpec,
        Supervisor,
    )
    from .worker import PluginWorker, WorkerSpec

# Imported on first use: `corral --version` or `corral keys list` need none of the host.
_LAZY: dict[str, str] = {
    "ActivationKey": "supervisor",
    "ActivationNotFoundError": "supervisor",
    "ActivationSpec": "supervisor",
    "CircuitOpenError": "slot_types",
    "ColdSpawner": "spawn",
    "DispatchError": "dispatch",
    "DispatchResult": "dispatch",
    "Dispatcher": "dispatch",
    "EgressBroker": "egress",
    "EgressDeniedError": "egress_errors",
    "EgressError": "egress_errors",
    "EgressEvent": "egress_audit",
    "EgressFailedError": "egress_errors",
    "EgressReason": "egress_errors",
    "EgressSettings": "egress_settings",
    "EgressSettingsError": "egress_errors",
    "ForkServerSpawner": "spawn",
    "GLOBAL": "supervisor",
    "Host": "host",
    "HostOverride": "egress_settings",
    "HostSettings": "host",
    "InstallError": "install_errors",
    "InstallSettings": "install",
    "Installer": "install",
    "LaunchRequest": "spawn",
    "NoProviderError": "dispatch",
    "PluginNotInstalledError": "host",
    "PluginWorker": "worker",
    "RestartSettings": "restart_policy",
    "RunnerError": "errors",
    "SandboxSettings": "sandboxing",
    "SandboxUnavailableError": "sandboxing",
    "Supervisor": "supervisor",
    "UnavailableError": "slot_types",
    "WatchSettings": "slot_types",
    "WorkerLauncher": "launcher",
    "WorkerSandbox": "sandboxing",
    "WorkerSpec": "worker",
    "WorkerStartError": "errors",
    "WorkerState": "slot_types",
    "audit_log_sink": "egress_audit",
    "to_remote_error": "egress_errors",
    "unconfined": "spawn",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "GLOBAL",
    "ActivationKey",
    "ActivationNotFoundError",
    "ActivationSpec",
    "CircuitOpenError",
    "ColdSpawner",
    "DispatchError",
    "DispatchResult",
    "Dispatcher",
    "EgressBroker",
    "EgressDeniedError",
    "EgressError",
    "EgressEvent",
    "EgressFailedError",
    "EgressReason",
    "EgressSettings",
    "EgressSettingsError",
    "ForkServerSpawner",
    "Host",
    "HostOverride",
    "HostSettings",
    "InstallError",
    "InstallSettings",
    "Installer",
    "LaunchRequest",
    "NoProviderError",
    "PluginNotInstalledError",
    "PluginWorker",
    "RestartSettings",
    "RunnerError",
    "SandboxSettings",
    "SandboxUnavailableError",
    "Supervisor",
    "UnavailableError",
    "WatchSettings",
    "WorkerLauncher",
    "WorkerSandbox",
    "WorkerSpec",
    "WorkerStartError",
    "WorkerState",
    "__version__",
    "audit_log_sink",
    "to_remote_error",
    "unconfined",
]
