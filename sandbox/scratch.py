"""Per-activation scratch directories: the only place a worker may write, removed at teardown.

Host side. Each scratch directory is owned by the worker's uid with mode 0700; their common
root is 0711, so a worker can reach its own directory but not list its neighbours'.
"""

from __future__ import annotations

import os

from ._names import is_plain_name
from .errors import ScratchError


def create_scratch(root: str, name: str, *, uid: int | None = None, gid: int | None = None) -> str:
    """Create `root`/`name` (mode 0700, owned by `uid`:`gid` when given) and return its path.

    `root` is created with mode 0711 when missing. `name` is a plain file name and must not
    exist yet. Raises ScratchError, and ValueError for a bad name.
    """
    if not is_plain_name(name):
        raise ValueError(f"bad scratch directory name {name!r}")
    path = os.path.join(root, name)
    try:
        os.makedirs(root, mode=0o711, exist_ok=True)
        os.mkdir(path, 0o700)
    except OSError as exc:
        raise ScratchError(path, f"cannot create: {exc.strerror}") from exc
    try:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        if uid is not None:
            os.chown(path, uid, uid if gid is None else gid)
    except OSError as exc:
        remove_scratch(path)
        raise ScratchError(path, f"cannot hand over: {exc.strerror}") from exc
    return path


def remove_scratch(path: str) -> None:
    """Delete `path` and everything in it; idempotent. Raises ScratchError on failure.

    Safe against symlinks a worker planted (the removal works on fds). Blocking: call via
    asyncio.to_thread for a large directory.
    """
    import shutil  # deferred: shutil imports compression modules the child never needs

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ScratchError(path, f"cannot remove: {exc.strerror}") from exc
