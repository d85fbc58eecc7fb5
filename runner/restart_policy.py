"""When to restart a worker: exponential backoff with full jitter, and a crash-loop circuit.

Pure logic over a caller-supplied monotonic clock, so it is tested without sleeping. The slot that
owns a worker asks it how long to wait and whether the circuit is open.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartSettings:
    """Backoff and circuit limits (defaults from supervisord, Erlang and Kubernetes practice)."""

    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    stable_after_s: float = 60.0  # a worker ready this long resets the backoff
    circuit_max_restarts: int = 5  # more restarts than this within the window open the circuit
    circuit_window_s: float = 60.0
    circuit_cooldown_s: float = 300.0  # then one probe start is tried


class RestartPolicy:
    """Track one slot's failures; say how long to back off and whether the circuit is open."""

    def __init__(self, settings: RestartSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._failures: deque[float] = deque()
        self._consecutive = 0
        self.open_until: float | None = None
        self.restarts = 0

    def record_failure(self, now: float, ready_since: float | None) -> float:
        """Note a crash, hang or failed start; return the delay before the next start.

        A worker that had been ready for `stable_after_s` resets the backoff first. Opening the
        circuit returns the cool-down as the delay.
        """
        s = self.settings
        self.restarts += 1
        if ready_since is not None and now - ready_since >= s.stable_after_s:
            self._consecutive = 0
        self._failures.append(now)
        while self._failures and now - self._failures[0] > s.circuit_window_s:
            self._failures.popleft()
        if len(self._failures) > s.circuit_max_restarts:
            self.open_until = now + s.circuit_cooldown_s
            return s.circuit_cooldown_s
        delay = self._rng.uniform(
            0.0, min(s.backoff_cap_s, s.backoff_base_s * 2**self._consecutive)
        )
        self._consecutive += 1
        return delay

    def is_open(self, now: float) -> bool:
        """Whether calls must fail fast: the circuit is open and its cool-down has not passed."""
        return self.open_until is not None and now < self.open_until

    def retry_after_s(self, now: float) -> float:
        """Seconds until the probe start (0 when the circuit is not open)."""
        return max(0.0, self.open_until - now) if self.open_until is not None else 0.0

    def probe_failed(self, now: float) -> float:
        """The probe start after a cool-down failed: open the circuit again; return the delay."""
        self.restarts += 1
        self.open_until = now + self.settings.circuit_cooldown_s
        return self.settings.circuit_cooldown_s

    def reset(self) -> None:
        """Close the circuit and clear the failure history (operator reset or a good probe)."""
        self.open_until = None
        self._failures.clear()
        self._consecutive = 0
