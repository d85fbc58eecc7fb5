"""Dropping the child's credentials to the unprivileged uid/gid of its policy.

Runs inside the child, after the cgroup join (which needs root) and before the namespaces.
Making the interpreter's files reachable after the drop is `importpath`'s job.
"""

from __future__ import annotations

import os

from .errors import LayerUnavailableError
from .layers import Layer


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`:`gid` for good: no supplementary groups, real = effective = saved ids.

    A no-op when already running as exactly that uid and gid. Raises
    LayerUnavailableError("credentials") when the kernel refuses (the host is not root) or
    when the ids read back differ.
    """
    if os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid):
        return
    try:
        # Groups and gid first: after setresuid we no longer have the right to change them.
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise LayerUnavailableError(
            Layer.CREDENTIALS, f"cannot become uid {uid} gid {gid}: {exc.strerror}"
        ) from exc
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise LayerUnavailableError(Layer.CREDENTIALS, "ids read back differ from the policy")
