"""The host: install and verification, the sandbox's host side, spawners, supervisor, dispatch,
the aiohttp app and the CLI.

It composes `protocol` (the wire) and `sandbox` (confinement); they know nothing of each other.
"""

__version__ = "0.1.0"

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
