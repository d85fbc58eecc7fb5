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

    Works on directory fds and never follows a symlink a worker planted. It is iterative, with
    at most two fds open, so a worker cannot defeat it with a very deep tree (shutil.rmtree
    recurses and raises RecursionError). Call it only once the worker is dead. Blocking: call via
    asyncio.to_thread.
    """
    try:
        _remove_tree(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ScratchError(path, f"cannot remove: {exc.strerror}") from exc


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_tree(path: str) -> None:
    current = os.open(path, _DIR_FLAGS)
    names: list[str] = []  # the path from `path` down to `current`
    try:
        while True:
            subdir = _empty_files(current)
            if subdir is not None:  # go down into it
                child = os.open(subdir, _DIR_FLAGS, dir_fd=current)
                os.close(current)
                current = child
                names.append(subdir)
                continue
            if not names:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=current)  # ".." is never a symlink
            os.close(current)
            current = parent
            os.rmdir(names.pop(), dir_fd=current)
    finally:
        os.close(current)
    os.rmdir(path)


def _empty_files(dir_fd: int) -> str | None:
    """Unlink every non-directory in `dir_fd`; return the name of a subdirectory, if any."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            os.unlink(entry.name, dir_fd=dir_fd)
    return None
