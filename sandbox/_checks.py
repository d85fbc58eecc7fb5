"""The probe's per-layer checks; each runs in a forked child of the probe interpreter.

Each check applies its layer for real, verifies the effect, and returns a short description,
or raises. `probe` owns the forking and the report; this module only tries things.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
from collections.abc import Callable

from . import _libc, credentials, landlock, namespaces, process
from . import rlimits as rlimits_layer
from . import seccomp as seccomp_layer
from .policy import ResourceLimits


def _expect_errno(action: str, expected: int, call: Callable[[], object]) -> None:
    """Raise unless calling `call` fails with `expected`."""
    try:
        call()
    except OSError as exc:
        if exc.errno == expected:
            return
        raise RuntimeError(f"{action}: {exc} (expected {errno.errorcode[expected]})") from exc
    raise RuntimeError(f"{action} succeeded but should be refused")


def landlock_abi() -> int:
    """Return the Landlock ABI, or 0."""
    try:
        return landlock.abi_version()
    except OSError:
        return 0


def rlimits() -> str:
    """Apply the default limits."""
    rlimits_layer.apply_rlimits(ResourceLimits())
    return "AS, CPU, NOFILE, FSIZE, CORE=0, NPROC"


def credentials_check(uid: int) -> str:
    """Drop to `uid` (only possible for root)."""
    if os.geteuid() != 0:
        raise RuntimeError(f"host is not root (uid {os.geteuid()}): workers keep its uid")
    credentials.drop_privileges(uid, uid)
    return f"setresuid to an unprivileged uid (probed {uid})"


def namespaces_check(uid: int) -> str:
    """Drop to `uid` when root, enter a user + net namespace, and find the network gone."""
    if os.geteuid() == 0:
        credentials.drop_privileges(uid, uid)
    namespaces.isolate_network()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with probe:
        _expect_errno("UDP connect", errno.ENETUNREACH, lambda: probe.connect(("127.0.0.1", 9)))
    return "user + network namespace; loopback down"


def landlock_check() -> str:
    """Enforce an empty ruleset and find / unreadable."""
    abi = landlock_abi()
    if abi < 1:
        raise RuntimeError("not supported or disabled by this kernel (no Landlock ABI)")
    process.set_no_new_privs()
    landlock.enforce(landlock.build_ruleset((), ()))
    _expect_errno("listing /", errno.EACCES, lambda: os.listdir("/"))
    extras = [
        name for level, name in ((4, "TCP"), (6, "signal+abstract-unix scope")) if abi >= level
    ]
    return f"ABI {abi}" + (f" ({', '.join(extras)})" if extras else "")


def seccomp_check() -> str:
    """Install the worker filter and find socket() and fork() refused."""
    process.set_no_new_privs()
    program = seccomp_layer.build_filter(os.getpid())
    seccomp_layer.install_filter(program)
    _expect_errno("socket()", errno.EAFNOSUPPORT, lambda: socket.socket().close())
    _expect_errno("fork()", errno.EPERM, os.fork)
    socket.socketpair()
    return f"BPF filter of {len(program) // 8} instructions ({os.uname().machine})"


def no_new_privs() -> str:
    """Set NO_NEW_PRIVS."""
    process.set_no_new_privs()
    return "prctl(PR_SET_NO_NEW_PRIVS)"


def pdeathsig() -> str:
    """Arm SIGKILL as the parent-death signal and read it back."""
    process.arm_parent_death_signal(0)
    value = ctypes.c_int(0)
    _libc.prctl(_libc.PR_GET_PDEATHSIG, ctypes.addressof(value))
    if value.value != signal.SIGKILL:
        raise RuntimeError(f"PR_GET_PDEATHSIG reads back {value.value}")
    return "prctl(PR_SET_PDEATHSIG, SIGKILL)"
