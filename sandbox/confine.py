"""Applying every layer of a `SandboxPolicy` to the calling process, inside the child.

`apply` orders the layers (each in its own module) and turns their failures into refusals or
warnings; the bootstrap and fork-server children call it. It imports nothing heavy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import TypeVar

from . import cgroups, credentials, landlock, namespaces, process, rlimits, seccomp
from .errors import LayerUnavailableError
from .events import warning_text
from .importpath import pin_import_path
from .policy import Mode, SandboxPolicy

_T = TypeVar("_T")


class _Steps:
    """Run layer steps; collect LayerUnavailableError as warnings unless the mode is strict."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.warnings: list[str] = []

    def run(self, step: Callable[[], _T]) -> _T | None:
        try:
            return step()
        except LayerUnavailableError as exc:
            if self.mode is Mode.STRICT:
                raise
            self.warnings.append(warning_text(exc.layer, exc.reason))
            return None


def _scratch_paths(policy: SandboxPolicy) -> tuple[str, ...]:
    return (policy.scratch_dir, *policy.read_write_paths)


def apply(policy: SandboxPolicy, *, keep_fds: Collection[int] = ()) -> list[str]:
    """Confine the calling process as `policy` says; return the permissive-mode warnings.

    Order: stray fds and session, rlimits, cgroup join (needs root), Landlock ruleset built and
    `sys.path` pinned to fds (both need root to open the paths), uid drop, user + network
    namespace, NO_NEW_PRIVS, Landlock enforced, seccomp, then the parent-death signal last
    (credential changes clear it). The process must be single-threaded; fds 0-2 and `keep_fds`
    stay open. Strict mode raises LayerUnavailableError naming the first missing layer;
    permissive mode returns "<layer>: <reason>" strings instead. Always raises
    ParentGoneError when the host died meanwhile, and ImportPathError when a sys.path entry
    cannot be opened. Irreversible: on any error the caller must exit.
    """
    steps = _Steps(policy.mode)
    process.close_stray_fds(keep_fds)
    steps.run(process.ensure_session)
    steps.run(lambda: rlimits.apply_rlimits(policy.limits))
    if policy.cgroup_dirs:
        steps.run(lambda: cgroups.join_cgroups(policy.cgroup_dirs))
    ruleset = None
    if policy.landlock:
        ruleset = steps.run(
            lambda: landlock.build_ruleset(
                policy.read_only_paths, _scratch_paths(policy), list_only=policy.sys_path
            )
        )
    if policy.sys_path:
        pin_import_path(policy.sys_path)
    if policy.uid is not None:
        uid, gid = policy.uid, policy.uid if policy.gid is None else policy.gid
        steps.run(lambda: credentials.drop_privileges(uid, gid))
    if policy.isolate_network:
        steps.run(namespaces.isolate_network)
    steps.run(process.set_no_new_privs)
    if ruleset is not None:
        steps.run(functools.partial(landlock.enforce, ruleset))
    if policy.seccomp:
        steps.run(seccomp.confine_syscalls)
    steps.run(lambda: process.arm_parent_death_signal(policy.host_pid))
    return steps.warnings
