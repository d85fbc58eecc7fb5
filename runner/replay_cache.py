"""Remembering which signed webhook deliveries were already accepted, so a captured one cannot be
played again while its timestamp is still inside the route's tolerance window.

`ReplayCache` is the seam (a shared PostgreSQL table can implement it later); `MemoryReplayCache`
is the in-process implementation, in bounded memory. What a nonce is belongs to `webhook_verify`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Final, Protocol

# (tenant_id, plugin_id, route_id, nonce): the same delivery may legitimately reach two tenants
# (one provider account configured twice), so a nonce is only unique within its route.
ReplayKey = tuple[str, str, str, str]

DEFAULT_MAX_ENTRIES: Final = 100_000
_log = logging.getLogger(__name__)


class ReplayCache(Protocol):
    """Where accepted nonces are recorded until they expire."""

    async def claim(self, key: ReplayKey, *, expires_at: float, now: float) -> bool:
        """Record `key` until `expires_at`; return False if it is already recorded and live.

        Times are Unix seconds (wall clock: provider timestamps are Unix times). A shared
        implementation must make the check and the insert one atomic step.
        """
        ...


class MemoryReplayCache:
    """A `ReplayCache` in this process: at most `max_entries` keys, oldest evicted first.

    Expired keys are dropped as new ones arrive. When the cache is full of live keys, the oldest
    live key is evicted (counted in `evicted_live`): that reopens a replay window for it, the
    price of bounded memory under a flood of authentic deliveries. Size it above the number of
    deliveries expected within the longest tolerance window.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.evicted_live = 0
        # Insertion order, which is close to expiry order: routes differ in tolerance, so a few
        # expired keys may wait behind a live one until the size bound reaches them.
        self._entries: OrderedDict[ReplayKey, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, key: ReplayKey, *, expires_at: float, now: float) -> bool:
        """Record `key` until `expires_at`; return False if it is already recorded and live."""
        return self.claim_now(key, expires_at=expires_at, now=now)

    def claim_now(self, key: ReplayKey, *, expires_at: float, now: float) -> bool:
        """The synchronous body of `claim`, for callers without a loop (and tests)."""
        known = self._entries.get(key)
        if known is not None:
            if known > now:
                return False
            del self._entries[key]
        self._drop_expired(now)
        while len(self._entries) >= self.max_entries:
            _, evicted_expiry = self._entries.popitem(last=False)
            if evicted_expiry <= now:
                continue
            self.evicted_live += 1
            if self.evicted_live == 1 or self.evicted_live % 10_000 == 0:
                _log.warning(
                    "replay cache full (%d keys): evicted %d live keys so far",
                    self.max_entries,
                    self.evicted_live,
                )
        self._entries[key] = expires_at
        return True

    def _drop_expired(self, now: float) -> None:
        while self._entries:
            oldest_key, expires_at = next(iter(self._entries.items()))
            if expires_at > now:
                return
            del self._entries[oldest_key]
