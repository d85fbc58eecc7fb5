"""Per-worker cgroups: memory and pids limits the kernel enforces on the worker and its threads.

Host side: `prepare_cgroups` picks a writable hierarchy at start-up (v2, else v1 memory + pids),
`WorkerCgroup` creates, limits and removes one cgroup per worker. Child side: `join_cgroups`,
called before the uid drop; where neither hierarchy exists, the host's watchdog must do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from enum import StrEnum
from typing import Final, NamedTuple

from ._names import is_plain_name
from .errors import CgroupError, LayerUnavailableError
from .layers import Layer
from .policy import ResourceLimits

PARENT_NAME: Final = "corral"  # every worker cgroup lives under <host's cgroup>/corral/
HOST_LEAF_NAME: Final = "host"  # v2: where the host moves when its cgroup must hold no process
_REMOVE_TIMEOUT_S: Final = 2.0
_REMOVE_POLL_S: Final = 0.005


class CgroupVersion(StrEnum):
    """Which cgroup interface the host uses for worker limits."""

    V2 = "v2"
    V1 = "v1"
    NONE = "none"


class CgroupSupport(NamedTuple):
    """Where worker cgroups are created: one parent (v2) or one per v1 hierarchy (memory, pids)."""

    version: CgroupVersion
    parents: tuple[str, ...]
    reason: str  # why this version was chosen, or why none is usable


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """Return (mount point, mount root, fstype, super options) for every cgroup mount."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        for line in file:
            head, _, tail = line.partition(" - ")
            fields, extra = head.split(), tail.split()
            if len(fields) >= 5 and len(extra) >= 3 and extra[0] in ("cgroup", "cgroup2"):
                options = set(extra[2].split(","))
                found.append((fields[4], fields[3], extra[0], options))
    return found


def _own_paths() -> dict[str, str]:
    """Map each v1 controller (and "" for v2) to the host's cgroup path, from /proc/self/cgroup."""
    paths = {}
    with open("/proc/self/cgroup", encoding="utf-8") as file:
        for line in file:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _directory(mount_point: str, mount_root: str, path: str) -> str:
    relative = path[len(mount_root) :] if path.startswith(mount_root) else path
    return os.path.join(mount_point, relative.lstrip("/"))


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


def _prepare_v2(mounts: list[tuple[str, str, str, set[str]]], own: dict[str, str]) -> str:
    """Enable memory and pids below the host's v2 cgroup; return the parent, or raise OSError."""
    v2 = [(point, root) for point, root, fstype, _ in mounts if fstype == "cgroup2"]
    if not v2 or "" not in own:
        raise OSError(errno.ENOENT, "no cgroup2 mount")
    base = _directory(v2[0][0], v2[0][1], own[""])
    with open(os.path.join(base, "cgroup.controllers"), encoding="ascii") as file:
        available = set(file.read().split())
    if not {"memory", "pids"} <= available:
        raise OSError(errno.ENOTSUP, f"memory/pids controllers not delegated to {base}")
    try:
        _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
    except OSError as exc:
        # v2 forbids controllers on a cgroup with processes in it. Under systemd with
        # `Delegate=yes` the service's cgroup holds the host itself: move it into a leaf.
        if exc.errno != errno.EBUSY or not _holds_only_this_process(base):
            raise
        leaf = os.path.join(base, HOST_LEAF_NAME)
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
    parent = os.path.join(base, PARENT_NAME)
    os.makedirs(parent, exist_ok=True)
    _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
    return parent


def _holds_only_this_process(cgroup_dir: str) -> bool:
    """Whether this process is the only one in `cgroup_dir` (so moving it empties the cgroup)."""
    with open(os.path.join(cgroup_dir, "cgroup.procs"), encoding="ascii") as file:
        return set(file.read().split()) == {str(os.getpid())}


def _prepare_v1(mounts: list[tuple[str, str, str, set[str]]], own: dict[str, str]) -> list[str]:
    """Create <host's cgroup>/corral in the v1 memory and pids hierarchies; raise OSError."""
    parents = []
    for controller in ("memory", "pids"):
        hierarchy = [
            (point, root)
            for point, root, fstype, options in mounts
            if fstype == "cgroup" and controller in options
        ]
        if not hierarchy or controller not in own:
            raise OSError(errno.ENOENT, f"no v1 {controller} hierarchy")
        parent = os.path.join(_directory(*hierarchy[0], own[controller]), PARENT_NAME)
        os.makedirs(parent, exist_ok=True)
        if not os.access(parent, os.W_OK):
            raise OSError(errno.EACCES, f"{parent} is not writable")
        parents.append(parent)
    return parents


def prepare_cgroups() -> CgroupSupport:
    """Find (and set up, idempotently) the hierarchy worker cgroups go into. Call once.

    Prefers v2 with memory and pids delegated, then writable v1 memory + pids hierarchies;
    otherwise returns version NONE with the reason. Never raises for a missing hierarchy.
    """
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as exc:
        return CgroupSupport(CgroupVersion.NONE, (), f"cannot read /proc: {exc.strerror}")
    try:
        parent = _prepare_v2(mounts, own)
        return CgroupSupport(CgroupVersion.V2, (parent,), "memory and pids delegated")
    except OSError as exc:
        why_not_v2 = exc.strerror or str(exc)
    try:
        parents = tuple(_prepare_v1(mounts, own))
        return CgroupSupport(CgroupVersion.V1, parents, f"memory + pids writable; v2: {why_not_v2}")
    except OSError as exc:
        why_not_v1 = exc.strerror or str(exc)
    return CgroupSupport(CgroupVersion.NONE, (), f"v2: {why_not_v2}; v1: {why_not_v1}")


class WorkerCgroup(NamedTuple):
    """One worker's cgroup: a directory per hierarchy, to pass as `SandboxPolicy.cgroup_dirs`."""

    version: CgroupVersion
    dirs: tuple[str, ...]

    @classmethod
    def create(cls, support: CgroupSupport, name: str, limits: ResourceLimits) -> WorkerCgroup:
        """Create the cgroup `name` under each parent of `support` and write its limits.

        `name` is a plain file name (letters, digits, `_.-`). Raises CgroupError, and ValueError
        for a bad name or a `support` of version NONE. Blocking: call via asyncio.to_thread.
        """
        if not is_plain_name(name):
            raise ValueError(f"bad cgroup name {name!r}")
        if support.version is CgroupVersion.NONE:
            raise ValueError(f"no usable cgroup hierarchy: {support.reason}")
        created: list[str] = []
        try:
            for parent in support.parents:
                os.mkdir(os.path.join(parent, name), 0o755)
                created.append(os.path.join(parent, name))
            cgroup = cls(support.version, tuple(created))
            cgroup._write_limits(limits)
        except OSError as exc:
            cls(support.version, tuple(created)).remove()  # only what this call created
            raise CgroupError(name, f"cannot create: {exc}") from exc
        return cgroup

    def _write_limits(self, limits: ResourceLimits) -> None:
        for path in self.dirs:
            files = set(os.listdir(path))
            if limits.memory_bytes is not None:
                memory = str(limits.memory_bytes)
                if "memory.max" in files:
                    _write(os.path.join(path, "memory.max"), memory)
                    if "memory.swap.max" in files:
                        _write(os.path.join(path, "memory.swap.max"), "0")
                elif "memory.limit_in_bytes" in files:
                    _write(os.path.join(path, "memory.limit_in_bytes"), memory)
                    if "memory.memsw.limit_in_bytes" in files:  # memory + swap: no swap at all
                        _write(os.path.join(path, "memory.memsw.limit_in_bytes"), memory)
            if limits.pids is not None and "pids.max" in files:
                _write(os.path.join(path, "pids.max"), str(limits.pids))

    def pids(self) -> set[int]:
        """Return the pids of the processes in this cgroup (empty once it is gone)."""
        members: set[int] = set()
        for path in self.dirs:
            procs = os.path.join(path, "cgroup.procs")
            with contextlib.suppress(FileNotFoundError), open(procs, encoding="ascii") as file:
                members.update(int(line) for line in file if line.strip())
        return members

    def _kill_members(self) -> None:
        kill_file = os.path.join(self.dirs[0], "cgroup.kill")
        if self.version is CgroupVersion.V2 and os.path.exists(kill_file):
            _write(kill_file, "1")
            return
        for pid in self.pids():
            # A pidfd pins the process, so re-checking membership rules out a recycled pid.
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if pid in self.pids():
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)

    def remove(self) -> None:
        """Kill every process left in the cgroup and delete it; idempotent.

        Polls for up to 2 s for the members to die. Raises CgroupError when the cgroup cannot
        be removed. Blocking: call via asyncio.to_thread.
        """
        deadline = time.monotonic() + _REMOVE_TIMEOUT_S
        for path in self.dirs:
            while os.path.isdir(path):
                try:
                    self._kill_members()
                    os.rmdir(path)
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(path, f"cannot remove: {exc}") from exc
                    time.sleep(_REMOVE_POLL_S)


def join_cgroups(dirs: tuple[str, ...]) -> None:
    """Move the calling process into each cgroup of `dirs` (child side, while still root).

    Raises LayerUnavailableError("cgroup") when a cgroup is missing or not writable.
    """
    pid = str(os.getpid())
    for path in dirs:
        try:
            _write(os.path.join(path, "cgroup.procs"), pid)
        except OSError as exc:
            raise LayerUnavailableError(
                Layer.CGROUP, f"cannot join {path}: {exc.strerror}"
            ) from exc
