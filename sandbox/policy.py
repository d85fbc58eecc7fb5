"""The sandbox policy: what a confined child may do, as plain data the host hands to the child.

The host builds a `SandboxPolicy`, serializes it with `to_json`, and the bootstrap inside the
child rebuilds it with `from_json` before applying any layer. This module only describes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

MIB: Final = 1024 * 1024


class Mode(StrEnum):
    """How a missing layer is treated."""

    STRICT = "strict"  # refuse to start a worker when a required layer is unavailable
    PERMISSIVE = "permissive"  # start it anyway and warn on every start


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Per-worker resource ceilings. None means "leave the inherited limit alone"."""

    address_space_bytes: int | None = 1024 * MIB  # RLIMIT_AS: a backstop, not the real limit
    cpu_seconds: int | None = 300  # RLIMIT_CPU soft limit; SIGXCPU, then SIGKILL one second later
    open_files: int | None = 256  # RLIMIT_NOFILE
    file_size_bytes: int | None = 64 * MIB  # RLIMIT_FSIZE
    processes: int | None = 64  # RLIMIT_NPROC; only meaningful with an unprivileged uid
    memory_bytes: int | None = 256 * MIB  # cgroup memory limit, where a writable cgroup exists
    pids: int | None = 32  # cgroup pids limit, where a writable cgroup exists


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """Everything the bootstrap needs to confine one worker, and nothing it must discover itself.

    Paths are absolute. `sys_path` becomes the child's `sys.path` (the interpreter runs with
    `-I -S`); each entry may be listed, but only `read_only_paths` may be read, so those should
    cover the stdlib, site-packages, shared libraries and the plugin's own packages.
    """

    scratch_dir: str
    read_only_paths: tuple[str, ...] = ()
    read_write_paths: tuple[str, ...] = ()  # besides scratch_dir, which is always read-write
    sys_path: tuple[str, ...] = ()
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    mode: Mode = Mode.STRICT
    uid: int | None = None  # drop to this uid/gid when the host runs as root
    gid: int | None = None
    isolate_network: bool = True  # new user + network namespace
    landlock: bool = True
    seccomp: bool = True
    cgroup_dirs: tuple[
        str, ...
    ] = ()  # cgroups the host prepared (v1: one per hierarchy); joined first
    host_pid: int = 0  # PDEATHSIG is checked against this pid (the process that spawned us)

    def to_json(self) -> str:
        """Serialize for the child's command line."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SandboxPolicy:
        """Rebuild a policy serialized with `to_json`; raises ValueError on bad input."""
        try:
            raw: dict[str, Any] = json.loads(text)
            limits = ResourceLimits(**raw.pop("limits"))
            return cls(
                limits=limits,
                mode=Mode(raw.pop("mode")),
                read_only_paths=tuple(raw.pop("read_only_paths")),
                read_write_paths=tuple(raw.pop("read_write_paths")),
                sys_path=tuple(raw.pop("sys_path")),
                cgroup_dirs=tuple(raw.pop("cgroup_dirs")),
                **raw,
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"invalid sandbox policy: {exc}") from exc
