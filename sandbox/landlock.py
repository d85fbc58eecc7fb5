"""Landlock: the file hierarchies the child may read or write, its TCP and its signal scope.

Runs inside the child in two steps: `build_ruleset` while still root (so paths under a 0700
directory can be opened), `restrict_self` after the namespaces and NO_NEW_PRIVS. Access rights
are chosen by the kernel's ABI: newer rights are handled only where the kernel knows them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from typing import Final

from . import _libc
from .errors import LayerUnavailableError
from .layers import Layer

_SYS_CREATE_RULESET: Final = 444  # the same on every architecture (generic syscall table)
_SYS_ADD_RULE: Final = 445
_SYS_RESTRICT_SELF: Final = 446
_CREATE_RULESET_VERSION: Final = 1
_RULE_PATH_BENEATH: Final = 1

EXECUTE: Final = 1 << 0
WRITE_FILE: Final = 1 << 1
READ_FILE: Final = 1 << 2
READ_DIR: Final = 1 << 3
REMOVE_DIR: Final = 1 << 4
REMOVE_FILE: Final = 1 << 5
MAKE_CHAR: Final = 1 << 6
MAKE_DIR: Final = 1 << 7
MAKE_REG: Final = 1 << 8
MAKE_SOCK: Final = 1 << 9
MAKE_FIFO: Final = 1 << 10
MAKE_BLOCK: Final = 1 << 11
MAKE_SYM: Final = 1 << 12
REFER: Final = 1 << 13  # ABI 2
TRUNCATE: Final = 1 << 14  # ABI 3
IOCTL_DEV: Final = 1 << 15  # ABI 5
NET_BIND_TCP: Final = 1 << 0  # ABI 4
NET_CONNECT_TCP: Final = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1  # ABI 6

_FS_BY_ABI: Final = {1: (1 << 13) - 1, 2: REFER, 3: TRUNCATE, 5: IOCTL_DEV}
_FILE_ONLY: Final = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_ONLY: Final = EXECUTE | READ_FILE | READ_DIR
# Execute is granted with reads: it governs execve only, which seccomp refuses anyway.


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def abi_version() -> int:
    """Return the kernel's Landlock ABI version, or 0 when Landlock is missing or disabled."""
    try:
        return _libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def handled_fs_access(abi: int) -> int:
    """Return every filesystem right ABI `abi` can handle."""
    return sum(bits for level, bits in _FS_BY_ABI.items() if abi >= level)


class Ruleset:
    """A Landlock ruleset under construction: an fd plus the rights it handles.

    Build it while the paths are still reachable, then call `restrict_self`; `close` is
    idempotent and `restrict_self` closes it.
    """

    def __init__(self, abi: int) -> None:
        self.abi = abi
        self.fs_access = handled_fs_access(abi)
        attr = _RulesetAttr(
            self.fs_access,
            NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
        )
        self._fd = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)

    def allow(self, path: str, access: int) -> bool:
        """Grant `access` beneath `path` (masked to what applies); False if it does not exist."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            allowed = access & self.fs_access
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                allowed &= _FILE_ONLY
            rule = _PathBeneathAttr(allowed, fd)
            _libc.syscall(_SYS_ADD_RULE, self._fd, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        finally:
            os.close(fd)
        return True

    def restrict_self(self) -> None:
        """Enforce the ruleset on the calling process; needs NO_NEW_PRIVS (or CAP_SYS_ADMIN)."""
        try:
            _libc.syscall(_SYS_RESTRICT_SELF, self._fd, 0)
        finally:
            self.close()

    def close(self) -> None:
        """Release the ruleset fd; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def build_ruleset(
    read_only: Iterable[str], read_write: Iterable[str], list_only: Iterable[str] = ()
) -> Ruleset:
    """Create a ruleset: read (and list) `read_only`, everything in `read_write`.

    `list_only` entries may only be listed (READ_DIR): sys.path roots whose other files must stay
    unreadable. Paths that do not exist are skipped. TCP bind/connect are denied with ABI >= 4;
    signals and abstract UNIX sockets are scoped to the sandbox with ABI >= 6. Raises
    LayerUnavailableError("landlock") when the kernel lacks Landlock or refuses a rule.
    """
    try:
        abi = abi_version()
    except OSError as exc:
        raise LayerUnavailableError(Layer.LANDLOCK, f"ABI query failed: {exc.strerror}") from exc
    if abi < 1:
        raise LayerUnavailableError(Layer.LANDLOCK, "not supported or disabled by this kernel")
    try:
        ruleset = Ruleset(abi)
    except OSError as exc:
        raise LayerUnavailableError(Layer.LANDLOCK, f"create_ruleset: {exc.strerror}") from exc
    try:
        for path in list_only:
            ruleset.allow(path, READ_DIR)
        for path in read_only:
            ruleset.allow(path, READ_ONLY)
        for path in read_write:
            ruleset.allow(path, ruleset.fs_access)
    except OSError as exc:
        ruleset.close()
        raise LayerUnavailableError(Layer.LANDLOCK, f"add_rule: {exc}") from exc
    return ruleset


def enforce(ruleset: Ruleset) -> None:
    """Restrict the calling process with `ruleset`; raises LayerUnavailableError("landlock")."""
    try:
        ruleset.restrict_self()
    except OSError as exc:
        raise LayerUnavailableError(Layer.LANDLOCK, f"restrict_self: {exc.strerror}") from exc
