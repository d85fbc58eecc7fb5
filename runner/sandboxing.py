"""Host side of confinement: settings, the start-up probe, and each worker's resources.

`WorkerSandbox` composes the `sandbox` package: it checks the kernel once, materializes the code
workers may read into a world-readable state directory, and for each worker allocates a uid, a
scratch directory and a cgroup, and builds the policy the bootstrap applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import psutil

import plugins.sdk
import protocol
from sandbox import (
    Mode,
    ResourceLimits,
    SandboxPolicy,
    SandboxReport,
    UidPool,
    WorkerCgroup,
    create_scratch,
    default_read_only_paths,
    default_sys_path,
    prepare_cgroups,
    probe,
    remove_scratch,
    required_layers_missing,
)
from sandbox.cgroups import CgroupSupport
from sandbox.uids import DEFAULT_FIRST_UID, DEFAULT_LAST_UID

from .digest import tree_digest
from .errors import RunnerError

_log = logging.getLogger(__name__)

RUNTIME_PACKAGES: Final = (
    Path(protocol.__file__).parent,
    Path(plugins.sdk.__file__).parent,
)
_DIR_MODE: Final = 0o755
_FILE_MODE: Final = 0o644


class StateDirBusyError(RunnerError):
    """Another corral host holds the state directory's lock."""


class SandboxUnavailableError(RunnerError):
    """Strict mode and a required layer is missing; `layers` names them with the reasons."""

    def __init__(self, layers: list[tuple[str, str]]) -> None:
        names = ", ".join(f"{layer} ({reason})" for layer, reason in layers)
        super().__init__(f"strict sandbox mode, but required layers are unavailable: {names}")
        self.layers = layers


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """Operator configuration of worker confinement (never taken from a plugin's manifest)."""

    state_dir: Path
    mode: Mode = Mode.STRICT
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    first_uid: int = DEFAULT_FIRST_UID
    last_uid: int = DEFAULT_LAST_UID
    drop_uid: bool = True  # only meaningful when the host runs as root
    cgroups: bool = True
    # Bundles under this root (the verified, read-only store) are run in place, not copied.
    trusted_bundle_root: Path | None = None


@dataclass(slots=True)
class Confinement:
    """What was prepared for one worker: its policy and how to release the rest."""

    policy: SandboxPolicy
    bundle_dir: Path
    release: Callable[[], Awaitable[None]]


class WorkerSandbox:
    """Prepare and release per-worker confinement. Build it with `await WorkerSandbox.open()`."""

    def __init__(
        self,
        settings: SandboxSettings,
        report: SandboxReport,
        cgroups: CgroupSupport | None,
        runtime_dir: Path,
        lock_fd: int | None = None,
    ) -> None:
        self.settings = settings
        self._lock_fd = lock_fd
        self.report = report
        self._cgroups = cgroups
        self.runtime_dir = runtime_dir
        self._uids = UidPool(settings.first_uid, settings.last_uid)
        self._scratch_root = settings.state_dir / "scratch"
        self._bundle_root = settings.state_dir / "bundles"
        self._bundles: dict[str, Path] = {}
        self._counter = 0
        self.sys_path = default_sys_path(str(runtime_dir))

    @classmethod
    async def open(cls, settings: SandboxSettings) -> WorkerSandbox:
        """Probe the kernel, check strict mode, prepare cgroups and the runtime copy.

        Raises SandboxUnavailableError in strict mode when a layer the policy needs is missing.
        """
        lock_fd = await asyncio.to_thread(_lock_state_dir, settings.state_dir)
        try:
            return await cls._open_locked(settings, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    async def _open_locked(cls, settings: SandboxSettings, lock_fd: int) -> WorkerSandbox:
        report = await asyncio.to_thread(probe)
        cgroups = await asyncio.to_thread(prepare_cgroups) if settings.cgroups else None
        if cgroups is not None and not cgroups.parents:
            _log.warning(
                "no writable cgroup hierarchy (%s); memory and pids limits are rlimits and "
                "the supervisor's watchdog only",
                cgroups.reason,
            )
            cgroups = None
        await asyncio.to_thread(_sweep, settings.state_dir / "scratch", cgroups)
        runtime_dir = await asyncio.to_thread(_materialize_runtime, settings.state_dir)
        sandbox = cls(settings, report, cgroups, runtime_dir, lock_fd)
        missing = required_layers_missing(sandbox.template_policy(), report)
        if missing:
            layers = [(str(status.layer), status.reason) for status in missing]
            if settings.mode is Mode.STRICT:
                raise SandboxUnavailableError(layers)
            _log.warning("PERMISSIVE sandbox: workers start without %s", layers)
        return sandbox

    def close(self) -> None:
        """Release the state directory's lock (after every worker has stopped)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def template_policy(self) -> SandboxPolicy:
        """The policy every worker gets, before its own scratch, uid and paths are filled in.

        Its `uid` and `cgroup_dirs` are placeholders that only say whether those layers are
        requested (for the strict-mode check); `confine` always replaces both.
        """
        is_root = os.geteuid() == 0
        return SandboxPolicy(
            scratch_dir=str(self._scratch_root),
            sys_path=self.sys_path,
            limits=self.settings.limits,
            mode=self.settings.mode,
            uid=0 if is_root and self.settings.drop_uid else None,
            cgroup_dirs=("-",) if self._cgroups is not None else (),
        )

    async def confine(self, *, plugin_id: str, tenant_id: str, bundle_dir: Path) -> Confinement:
        """Prepare one worker of (tenant, plugin): bundle copy, uid, scratch, cgroup, policy."""
        bundle = await self._materialize_bundle(bundle_dir)
        self._counter += 1
        name = f"{_safe(tenant_id)}.{_safe(plugin_id)}.{os.getpid()}.{self._counter}"
        is_root = os.geteuid() == 0
        uid = self._uids.allocate() if is_root and self.settings.drop_uid else None
        scratch = ""
        cgroup: WorkerCgroup | None = None
        try:
            scratch = await asyncio.to_thread(
                create_scratch, str(self._scratch_root), name, uid=uid, gid=uid
            )
            if self._cgroups is not None:
                cgroup = await asyncio.to_thread(
                    WorkerCgroup.create, self._cgroups, name, self.settings.limits
                )
        except BaseException:
            await _release(uid, self._uids, scratch, cgroup)
            raise
        policy = replace(
            self.template_policy(),
            scratch_dir=scratch,
            read_only_paths=default_read_only_paths(str(self.runtime_dir), str(bundle)),
            uid=uid,
            gid=uid,
            cgroup_dirs=tuple(cgroup.dirs) if cgroup is not None else (),
        )

        async def release() -> None:
            await _release(uid, self._uids, scratch, cgroup)

        return Confinement(policy, bundle, release)

    async def _materialize_bundle(self, bundle_dir: Path) -> Path:
        if not bundle_dir.is_absolute():
            raise ValueError(f"bundle directory {bundle_dir} is not absolute")
        root = self.settings.trusted_bundle_root
        # No ".." may climb out of the root (normpath is string work, no I/O).
        normalized = Path(os.path.normpath(bundle_dir))  # noqa: ASYNC240
        if root is not None and normalized.is_relative_to(root):
            return normalized
        key = str(bundle_dir)
        known = self._bundles.get(key)
        if known is None:
            known = await asyncio.to_thread(_copy_bundle, bundle_dir, self._bundle_root)
            self._bundles[key] = known
        return known


async def _release(
    uid: int | None, uids: UidPool, scratch: str, cgroup: WorkerCgroup | None
) -> None:
    """Free a worker's cgroup, scratch and uid, in that order.

    The uid goes back to the pool only when everything it owned is gone: a leftover scratch
    directory would otherwise belong to the next tenant that gets the uid.
    """
    clean = True
    if cgroup is not None:
        try:
            await asyncio.to_thread(cgroup.remove)  # kills anything still in it
        except Exception:
            clean = False
            _log.error("cannot remove cgroup %s", cgroup.dirs, exc_info=True)
    if scratch:
        try:
            await asyncio.to_thread(remove_scratch, scratch)
        except Exception:
            clean = False
            _log.error(
                "cannot remove scratch %s; its uid %s stays reserved", scratch, uid, exc_info=True
            )
    if uid is not None and clean:
        uids.release(uid)


def _lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's exclusive lock; raise StateDirBusyError if another host has it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "host.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirBusyError(f"another corral host is using {state_dir}") from None
    return fd


def _sweep(scratch_root: Path, cgroups: CgroupSupport | None) -> None:
    """Remove what a host that died without cleaning up left: scratch dirs and worker cgroups.

    Runs under the state directory's lock, so every scratch directory is stale. Cgroups are
    shared by every host in this cgroup, so only those named after a dead host pid are removed.
    """
    if scratch_root.is_dir():
        stale = sorted(scratch_root.iterdir())
        for path in stale:
            remove_scratch(str(path))
        if stale:
            _log.warning("removed %d scratch directories left by an earlier run", len(stale))
    if cgroups is None:
        return
    names = {n for parent in cgroups.parents for n in _listdir(parent)}
    for name in sorted(names):
        host_pid = _host_pid_of(name)
        if host_pid is None or host_pid == os.getpid() or psutil.pid_exists(host_pid):
            continue
        dirs = tuple(
            os.path.join(p, name) for p in cgroups.parents if os.path.isdir(os.path.join(p, name))
        )
        WorkerCgroup(cgroups.version, dirs).remove()
        _log.warning("removed cgroup %s left by dead host %d", name, host_pid)


def _listdir(path: str) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _host_pid_of(name: str) -> int | None:
    """Worker cgroups are named `<tenant>.<plugin>.<host pid>.<n>` (see `confine`)."""
    parts = name.rsplit(".", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:48]


def _materialize_runtime(state_dir: Path) -> Path:
    """Copy the packages a worker imports (`protocol`, `plugins.sdk`) to a readable place.

    Workers may not read the host's source tree (it may sit under /root, next to the config
    store), so they import these copies instead; the copy is keyed by content.
    """
    digests = "-".join(tree_digest(p)[:12] for p in RUNTIME_PACKAGES)
    target = state_dir / "runtime" / digests
    if not target.exists():
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        _copy_readable(RUNTIME_PACKAGES[0], staging / "protocol")
        (staging / "plugins").mkdir(mode=_DIR_MODE)
        (staging / "plugins" / "__init__.py").write_text('"""corral plugins (runtime copy)."""\n')
        _copy_readable(RUNTIME_PACKAGES[1], staging / "plugins" / "sdk")
        _make_readable(staging)
        staging.rename(target)
    _make_traversable(target)
    return target


def _copy_bundle(source: Path, bundle_root: Path) -> Path:
    target = bundle_root / tree_digest(source)
    _copy_readable(source, target)
    return target


def _copy_readable(source: Path, target: Path) -> None:
    if target.exists():
        return
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _make_readable(staging)
    staging.rename(target)
    _make_traversable(target)


def _make_readable(root: Path) -> None:
    os.chmod(root, _DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), _DIR_MODE)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), _FILE_MODE)


def _make_traversable(path: Path) -> None:
    """Warn when an unprivileged worker could not reach `path` (a 0700 ancestor, say)."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(OSError):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                _log.warning(
                    "%s is not traversable by other users; workers cannot reach %s", parent, path
                )
                return
