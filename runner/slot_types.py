"""What a slot shows and raises: its states, status, watch settings and unavailability errors.

Shared by `runner.slot` (which keeps workers) and its readers (supervisor, API, metrics); the
keeping itself is `Slot`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from .errors import RunnerError

IDLE_ENV: Final = "CORRAL_WORKER_IDLE_SECONDS"


class WorkerState(StrEnum):
    """The visible state of a slot."""

    STARTING = "starting"
    READY = "ready"
    IDLE = "idle"  # stopped after its idle time; the next call starts a worker again
    DRAINING = "draining"
    BACKOFF = "backoff"
    CIRCUIT_OPEN = "circuit_open"
    STOPPING = "stopping"
    STOPPED = "stopped"


class UnavailableError(RunnerError):
    """No worker can take the call now; retry after `retry_after_s` (None: unknown)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class CircuitOpenError(UnavailableError):
    """The slot crash-looped; calls fail fast until the cool-down ends or an operator resets it."""


def idle_seconds_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """Read `CORRAL_WORKER_IDLE_SECONDS` (unset, empty or 0: never stop an idle worker).

    Raises ValueError for anything but a finite number of seconds >= 0.
    """
    text = environ.get(IDLE_ENV, "").strip()
    if not text:
        return 0.0
    try:
        idle_s = float(text)
    except ValueError:
        raise ValueError(f"{IDLE_ENV} must be a number of seconds, not {text!r}") from None
    if not 0.0 <= idle_s < float("inf"):
        raise ValueError(f"{IDLE_ENV} must be >= 0 and finite, not {text!r}")
    return idle_s


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """How a running worker is watched and when it is replaced."""

    ping_interval_s: float = 5.0
    ping_timeout_s: float = 2.0
    stop_grace_s: float = 2.0
    drain_timeout_s: float = 10.0
    start_wait_s: float = 10.0  # how long a call waits for a starting worker
    memory_check_interval_s: float = 2.0
    memory_soft_bytes: int | None = None  # over: drain and replace
    memory_hard_bytes: int | None = None  # over: kill
    max_calls: int | None = None  # recycle after this many calls
    max_age_s: float | None = None  # recycle after this long
    # Stop a worker no call has used for this long (0: never); the next call starts one again.
    # Read from the environment when not given, so the host's default settings honour it.
    idle_s: float = field(default_factory=idle_seconds_from_env)


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """What an operator sees of one slot."""

    instance: int
    state: WorkerState
    pid: int | None
    restarts: int
    last_exit: int | None
    last_error: str | None
    retry_after_s: float | None
    calls: int
    inflight: int
    draining: int
    stderr_tail: list[str]
