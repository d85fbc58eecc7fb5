"""Host side of a cold start: the argv, environment and cwd that run a worker under the bootstrap.

`build_launch` only computes; the caller spawns (see `Launch`) without a pre-exec hook, `user=` or
`group=`, which force a slow, thread-unsafe fork. The default path helpers describe the running
interpreter with sysconfig, here in the host, so that the child never imports it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from .environment import build_env
from .policy import SandboxPolicy

BOOTSTRAP_PATH: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.py")
PYTHON_FLAGS: Final = ("-I", "-S", "-B")  # isolated, no site hooks, no bytecode writes

SYSTEM_READ_ONLY_PATHS: Final = (
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/etc/ld.so.cache",  # without it the loader cannot find libssl & co. (`import ssl` fails)
    "/usr/share/zoneinfo",
    "/etc/localtime",
    "/dev/urandom",
)
DEFAULT_READ_WRITE_PATHS: Final = ("/dev/null",)


class Launch(NamedTuple):
    """What to pass to `asyncio.create_subprocess_exec` for one worker.

    Spawn with ``create_subprocess_exec(*argv, env=env, cwd=cwd, stdin=PIPE, stdout=PIPE,
    stderr=PIPE, start_new_session=True, close_fds=True)``, from the event-loop thread.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str


def build_launch(
    policy: SandboxPolicy,
    entry_module: str,
    entry_args: Sequence[str] = (),
    *,
    python: str = sys.executable,
    extra_env: Mapping[str, str] | None = None,
) -> Launch:
    """Return the launch of `entry_module` under the bootstrap, confined by `policy`.

    A `policy.host_pid` of 0 is filled in with this process's pid: spawn from this process
    (and from the event-loop thread, since PDEATHSIG follows the spawning thread). `extra_env`
    is added to the allow-listed environment (see `build_env`). Raises ValueError for a bad
    module name, a relative scratch directory or a disallowed variable.
    """
    if not all(part.isidentifier() for part in entry_module.split(".")):
        raise ValueError(f"bad entry module name {entry_module!r}")
    if not os.path.isabs(policy.scratch_dir):
        raise ValueError(f"scratch directory {policy.scratch_dir!r} is not absolute")
    if policy.host_pid == 0:
        policy = dataclasses.replace(policy, host_pid=os.getpid())
    argv = (python, *PYTHON_FLAGS, BOOTSTRAP_PATH, policy.to_json(), entry_module, *entry_args)
    return Launch(argv, build_env(policy.scratch_dir, extra_env), policy.scratch_dir)


def _existing(paths: Iterable[str]) -> tuple[str, ...]:
    """Keep the paths that exist, in order, without duplicates."""
    seen: dict[str, None] = {}
    for path in paths:
        if path and os.path.exists(path):
            seen.setdefault(path, None)
    return tuple(seen)


def default_sys_path(*extra: str) -> tuple[str, ...]:
    """Return this interpreter's stdlib, lib-dynload and site-packages dirs, then `extra`.

    This is what the worker needs as `sys.path` to import the stdlib and installed packages
    (msgspec) under ``-I -S``; `extra` adds the roots of the plugin's own packages.
    """
    import sysconfig  # host side only: ~1.6 ms the child must not pay

    # "stdlib" follows the base interpreter; "platstdlib" would point into a venv.
    stdlib = sysconfig.get_path("stdlib")
    packages = (sysconfig.get_path("purelib"), sysconfig.get_path("platlib"))
    return _existing([stdlib, os.path.join(stdlib, "lib-dynload"), *packages, *extra])


def default_read_only_paths(*extra: str) -> tuple[str, ...]:
    """Return what a worker of this interpreter must read, then `extra`.

    That is the stdlib, lib-dynload, site-packages, the shared-library dirs, the loader cache,
    time zones and /dev/urandom. Add the plugin's own package dirs as `extra`; a sys.path root
    that also holds secrets (such as a project root with a config store) belongs on `sys_path`
    only, where it can be listed but not read.
    """
    import sysconfig

    shared: list[str] = []
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and library:
        shared.append(os.path.join(libdir, library))
    return _existing([*default_sys_path(), *shared, *SYSTEM_READ_ONLY_PATHS, *extra])
