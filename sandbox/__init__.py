"""Starting a confined child: rlimits, cgroups, credentials, namespaces, Landlock, seccomp, env.

The host side builds a `SandboxPolicy` and a `Launch` (`build_launch`), prepares cgroups,
scratch directories and uids, and probes the kernel once (`probe`). The child side is
`confine.apply`, run by `bootstrap.py` before any plugin code. Imports only the stdlib.
"""

from __future__ import annotations

from .cgroups import CgroupSupport, CgroupVersion, WorkerCgroup, join_cgroups, prepare_cgroups
from .confine import apply
from .environment import build_env
from .errors import (
    CgroupError,
    ImportPathError,
    LayerUnavailableError,
    ParentGoneError,
    ProbeError,
    SandboxError,
    ScratchError,
    UidPoolExhaustedError,
)
from .events import EXIT_FAILED, EXIT_REFUSED
from .launch import (
    BOOTSTRAP_PATH,
    DEFAULT_READ_WRITE_PATHS,
    Launch,
    build_launch,
    default_read_only_paths,
    default_sys_path,
)
from .layers import Layer
from .policy import Mode, ResourceLimits, SandboxPolicy
from .probe import (
    LayerStatus,
    SandboxReport,
    format_table,
    probe,
    requested_layers,
    required_layers_missing,
)
from .scratch import create_scratch, remove_scratch
from .uids import UidPool

__all__ = [
    "BOOTSTRAP_PATH",
    "DEFAULT_READ_WRITE_PATHS",
    "EXIT_FAILED",
    "EXIT_REFUSED",
    "CgroupError",
    "CgroupSupport",
    "CgroupVersion",
    "ImportPathError",
    "Launch",
    "Layer",
    "LayerStatus",
    "LayerUnavailableError",
    "Mode",
    "ParentGoneError",
    "ProbeError",
    "ResourceLimits",
    "SandboxError",
    "SandboxPolicy",
    "SandboxReport",
    "ScratchError",
    "UidPool",
    "UidPoolExhaustedError",
    "WorkerCgroup",
    "apply",
    "build_env",
    "build_launch",
    "create_scratch",
    "default_read_only_paths",
    "default_sys_path",
    "format_table",
    "join_cgroups",
    "prepare_cgroups",
    "probe",
    "remove_scratch",
    "requested_layers",
    "required_layers_missing",
]
