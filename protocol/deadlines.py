"""Many per-call deadlines on one loop timer.

Arming a loop timer per call (`asyncio.timeout`) cost 8-10 us of a ~30 us round trip on uvloop;
here every pending call shares one timer, armed at the earliest deadline. Which calls the deadlines
belong to, and what expiry means, is the endpoint's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

# Loop timers may fire up to a clock tick early (uvloop counts in milliseconds); a deadline that
# close is due, or the timer would re-arm for the same instant and spin.
_SLACK_S: Final = 0.001


class Deadlines:
    """Call `on_expired(key, value)` once a key's deadline (loop clock, seconds) has passed.

    At most one loop timer is armed: adding a deadline later than the armed one costs a dict
    insertion. A discarded key never expires. Must be used from the loop's thread.
    """

    def __init__(self, on_expired: Callable[[int, Any], None]) -> None:
        self._on_expired = on_expired
        self._entries: dict[int, tuple[float, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, key: int, when: float, value: Any) -> None:
        """Expire `key` at loop time `when`, replacing any deadline it had."""
        self._entries[key] = (when, value)
        if self._timer is None or when < self._timer_at:
            self._arm(when)

    def discard(self, key: int) -> None:
        """Forget `key`'s deadline, if it has one."""
        self._entries.pop(key, None)

    def close(self) -> None:
        """Forget every deadline and disarm the timer. Idempotent."""
        self._entries.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer = None
        horizon = asyncio.get_running_loop().time() + _SLACK_S
        expired = [(key, value) for key, (when, value) in self._entries.items() if when <= horizon]
        for key, _ in expired:
            del self._entries[key]
        if self._entries:
            self._arm(min(when for when, _ in self._entries.values()))
        for key, value in expired:
            self._on_expired(key, value)
