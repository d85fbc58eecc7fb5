"""Process hygiene inside the child: session, stray fds, NO_NEW_PRIVS and the parent-death signal.

The session and fd steps come first, NO_NEW_PRIVS before Landlock and seccomp, and the
parent-death signal last of all, since any credential change clears it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Collection

from . import _libc
from .errors import LayerUnavailableError, ParentGoneError
from .layers import Layer


def close_stray_fds(keep: Collection[int] = ()) -> None:
    """Close every fd above stderr except those in `keep` (a fork-server child's inheritance)."""
    low = 3
    for fd in sorted(k for k in keep if k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def ensure_session() -> None:
    """Lead a session of its own (the host spawns with start_new_session; a fork may not have).

    Raises LayerUnavailableError("session") when the process leads a process group already.
    """
    if os.getsid(0) == os.getpid():
        return
    try:
        os.setsid()
    except OSError as exc:
        raise LayerUnavailableError(Layer.SESSION, f"setsid: {exc.strerror}") from exc


def set_no_new_privs() -> None:
    """Forbid gaining privileges (setuid binaries, file capabilities) for good."""
    try:
        _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)
        if _libc.prctl(_libc.PR_GET_NO_NEW_PRIVS) != 1:
            raise OSError(0, "PR_GET_NO_NEW_PRIVS reads back 0")
    except OSError as exc:
        raise LayerUnavailableError(Layer.NO_NEW_PRIVS, str(exc)) from exc


def arm_parent_death_signal(host_pid: int) -> None:
    """Die with SIGKILL when the host exits; then check that the host is still our parent.

    Must come after every credential change, which clears the setting. Raises
    LayerUnavailableError("pdeathsig") when prctl fails, and ParentGoneError when the parent
    is no longer `host_pid` (the host died before the signal was armed) -- in every mode.
    A `host_pid` of 0 skips the check.
    """
    try:
        _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as exc:
        raise LayerUnavailableError(Layer.PDEATHSIG, f"prctl: {exc.strerror}") from exc
    parent = os.getppid()
    if host_pid and parent != host_pid:
        raise ParentGoneError(host_pid, parent)
