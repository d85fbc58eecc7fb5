"""The names of the confinement layers, shared by the child-side code, the probe and the errors.

Each layer is applied by its own module; this one only names them, in the order of `apply`.
"""

from __future__ import annotations

from enum import StrEnum


class Layer(StrEnum):
    """One confinement layer; the value is the name used in logs, errors and the doctor table."""

    SESSION = "session"  # new session, stray fds closed
    RLIMITS = "rlimits"
    CGROUP = "cgroup"
    CREDENTIALS = "credentials"  # drop to an unprivileged uid/gid
    NAMESPACES = "namespaces"  # new user + network namespace
    NO_NEW_PRIVS = "no_new_privs"
    LANDLOCK = "landlock"
    SECCOMP = "seccomp"
    PDEATHSIG = "pdeathsig"
