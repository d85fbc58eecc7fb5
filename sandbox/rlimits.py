"""Resource limits (setrlimit) of the calling process: address space, CPU, files, processes.

Runs inside the child. Memory here is only a backstop (RLIMIT_AS counts virtual memory); the real
memory and pids limits are cgroups (`cgroups`) and the host's watchdog.
"""

from __future__ import annotations

import resource
from typing import Final

from .errors import LayerUnavailableError
from .layers import Layer
from .policy import ResourceLimits

_INFINITY: Final = resource.RLIM_INFINITY
CPU_KILL_GRACE_S: Final = (
    1  # the hard CPU limit (SIGKILL) sits this far above the soft one (SIGXCPU)
)


def _lowered(resource_id: int, soft: int, hard: int | None = None) -> None:
    """Set `resource_id` to (soft, hard), never above the limits inherited from the host."""
    _, old_hard = resource.getrlimit(resource_id)
    new_hard = soft if hard is None else hard
    if old_hard != _INFINITY:
        new_hard = min(new_hard, old_hard)
    resource.setrlimit(resource_id, (min(soft, new_hard), new_hard))


def apply_rlimits(limits: ResourceLimits) -> None:
    """Apply every limit of `limits` that is not None, and turn core dumps off.

    Raises LayerUnavailableError("rlimits") when the kernel refuses one.
    """
    try:
        _lowered(resource.RLIMIT_CORE, 0)
        if limits.address_space_bytes is not None:
            _lowered(resource.RLIMIT_AS, limits.address_space_bytes)
        if limits.cpu_seconds is not None:
            _lowered(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + CPU_KILL_GRACE_S)
        if limits.open_files is not None:
            _lowered(resource.RLIMIT_NOFILE, limits.open_files)
        if limits.file_size_bytes is not None:
            _lowered(resource.RLIMIT_FSIZE, limits.file_size_bytes)
        if limits.processes is not None:
            # Counted per real uid and ignored for root: it only bites after the uid drop.
            _lowered(resource.RLIMIT_NPROC, limits.processes)
    except (OSError, ValueError) as exc:
        raise LayerUnavailableError(Layer.RLIMITS, f"setrlimit failed: {exc}") from exc
