"""A pool of unprivileged uids, one per activation, so that no two workers share an identity.

Host side and in-memory: the pool does not create accounts (the uids need none) and does not
persist. Release a uid only after its worker has been reaped and its cgroup removed.
"""

from __future__ import annotations

from typing import Final

from .errors import UidPoolExhaustedError

# 100,000 uids in 65536-524287, a range systemd leaves unallocated (its DynamicUser= range is
# 61184-65519, container ranges start at 524288): no worker shares a uid with a service, and
# 1,000 live workers still leave room for every drain-and-switch and recycle.
DEFAULT_FIRST_UID: Final = 200_000
DEFAULT_LAST_UID: Final = 299_999


class UidPool:
    """Hand out uids from `first`..`last` inclusive; each one's gid is the same number."""

    def __init__(self, first: int = DEFAULT_FIRST_UID, last: int = DEFAULT_LAST_UID) -> None:
        if not 0 < first <= last < 2**31:
            raise ValueError(f"bad uid range {first}..{last}")
        self.first = first
        self.last = last
        self._in_use: set[int] = set()
        self._next = first

    def allocate(self) -> int:
        """Return a uid no other live activation holds; raises UidPoolExhaustedError.

        Uids are handed out round-robin, so a just-released uid is reused as late as possible.
        """
        size = self.last - self.first + 1
        for step in range(size):
            uid = self.first + (self._next - self.first + step) % size
            if uid not in self._in_use:
                self._in_use.add(uid)
                self._next = uid + 1 if uid < self.last else self.first
                return uid
        raise UidPoolExhaustedError(f"all {size} uids {self.first}..{self.last} are in use")

    def release(self, uid: int) -> None:
        """Return `uid` to the pool; releasing a uid that is not held is a no-op."""
        self._in_use.discard(uid)

    def in_use(self) -> frozenset[int]:
        """Return the uids currently handed out."""
        return frozenset(self._in_use)
