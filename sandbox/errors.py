"""Errors raised by the sandbox package: one root, subclasses chosen by what the caller does next.

Each layer translates the kernel's OSErrors into these at the package edge.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error raised by the sandbox package."""


class LayerUnavailableError(SandboxError):
    """A requested layer cannot be applied; in strict mode the worker must not start.

    `layer` is a `Layer` value (such as "landlock"); `reason` says why, in words for an operator.
    """

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"sandbox layer {layer} unavailable: {reason}")
        self.layer = layer
        self.reason = reason

    def __reduce__(self) -> tuple[type[LayerUnavailableError], tuple[str, str]]:
        return (type(self), (self.layer, self.reason))


class ParentGoneError(SandboxError):
    """The host exited before the worker armed its parent-death signal; the worker must exit."""

    def __init__(self, expected_pid: int, actual_pid: int) -> None:
        super().__init__(f"parent is pid {actual_pid}, expected host pid {expected_pid}")
        self.expected_pid = expected_pid
        self.actual_pid = actual_pid


class ImportPathError(SandboxError):
    """A `sys.path` entry of the policy could not be opened before the privilege drop."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot pin sys.path entry {path}: {reason}")
        self.path = path
        self.reason = reason


class CgroupError(SandboxError):
    """A worker cgroup could not be created, configured or removed; see `path`."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cgroup {path}: {reason}")
        self.path = path
        self.reason = reason


class ScratchError(SandboxError):
    """A scratch directory could not be created or removed; see `path`."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"scratch directory {path}: {reason}")
        self.path = path
        self.reason = reason


class UidPoolExhaustedError(SandboxError):
    """Every uid of the pool is in use; no further worker can start until one is released."""


class ProbeError(SandboxError):
    """The probe child could not be run or its report could not be read."""
