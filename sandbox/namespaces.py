"""A new user and network namespace for the child, so it has no usable network interface.

Runs inside the child after the uid drop and before Landlock (which would forbid writing the id
maps). The namespace's capabilities are dropped again at once: the child needs none of them.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Final

from . import _libc
from .errors import LayerUnavailableError
from .layers import Layer

CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWNET: Final = 0x40000000
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable sets the new namespace granted."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _libc.call("capset", ctypes.byref(header), ctypes.byref(data))


def isolate_network() -> None:
    """Move the calling process into a new user + network namespace, mapping its own ids.

    Only an unconfigured loopback exists inside, so TCP and UDP fail with ENETUNREACH. Pathname
    UNIX sockets stay reachable (seccomp and Landlock cover them). The process must be
    single-threaded. Raises LayerUnavailableError("namespaces") when the kernel refuses.
    """
    uid, gid = os.geteuid(), os.getegid()
    try:
        # After setresuid the process is not dumpable, and /proc/self/uid_map then belongs to
        # root: writing it fails with EACCES. Dumpable again for the writes, and off after.
        _libc.prctl(_libc.PR_SET_DUMPABLE, 1)
        try:
            _libc.call("unshare", CLONE_NEWUSER | CLONE_NEWNET)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise OSError(
                    exc.errno, "unshare: EINVAL (is the process multi-threaded?)"
                ) from exc
            raise
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        _drop_capabilities()
        _libc.prctl(_libc.PR_SET_DUMPABLE, 0)
    except OSError as exc:
        raise LayerUnavailableError(Layer.NAMESPACES, str(exc)) from exc
