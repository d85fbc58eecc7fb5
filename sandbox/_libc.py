"""Thin ctypes access to the few libc entry points the layers need: `syscall` and `prctl`.

The library is resolved from the running interpreter (`CDLL(None)`), never with
`ctypes.util.find_library`, which forks `ldconfig` (slow, and broken under Landlock).
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

_LIBC: Final = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_LIBC.prctl.restype = ctypes.c_int

PR_SET_PDEATHSIG: Final = 1
PR_GET_PDEATHSIG: Final = 2
PR_GET_DUMPABLE: Final = 3
PR_SET_DUMPABLE: Final = 4
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39


def _as_carg(value: object) -> object:
    """Pass integers as C longs: variadic `syscall` reads every argument as a long."""
    if isinstance(value, int):
        return ctypes.c_long(value)
    return value


def syscall(number: int, *args: object) -> int:
    """Call syscall `number` with integer or ctypes pointer arguments.

    Return its result, or raise OSError carrying the kernel's errno.
    """
    result = int(_LIBC.syscall(ctypes.c_long(number), *(_as_carg(a) for a in args)))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """Call prctl(2); return its result, or raise OSError with the kernel's errno."""
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    result = int(_LIBC.prctl(ctypes.c_int(option), *args))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def call(name: str, *args: object) -> int:
    """Call the libc function `name`; return its result, or raise OSError on -1."""
    result = int(getattr(_LIBC, name)(*(_as_carg(a) for a in args)))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result
