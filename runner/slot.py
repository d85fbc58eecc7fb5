"""One instance of one activation: keep a worker ready, watch it, replace it, tear it down.

A `Slot` owns a keeper task that starts its worker (with backoff, behind a crash-loop circuit),
watches it (exit, missed ping, memory, age and call count) and restarts or recycles it; with an
idle time set, it stops a worker no call has used for that long and starts one again on the next
call (scale to zero). Calls go through `Slot.call`, which fails fast while the circuit is open.
Which slots exist is the supervisor's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Final

import psutil

from protocol import CallTimeoutError, ProtocolError, VersionMismatchError

from .errors import WorkerStartError
from .restart_policy import RestartPolicy, RestartSettings
from .slot_types import (
    CircuitOpenError,
    SlotStatus,
    UnavailableError,
    WatchSettings,
    WorkerState,
)
from .worker import PluginWorker

_log = logging.getLogger(__name__)

WorkerFactory = Callable[[], Awaitable[PluginWorker]]
SlotEvent = Callable[[str, str], None]  # ("restart" or "circuit_open", reason): for metrics
_START_ERRORS: Final = (WorkerStartError, VersionMismatchError, ProtocolError, OSError)
_IDLE_TICK_FLOOR_S: Final = 0.01  # never poll for idleness faster than this


class _Outcome(StrEnum):
    EXITED = "exited"
    HUNG = "hung"
    OVER_MEMORY = "over_memory"
    RECYCLE = "recycle"
    IDLE = "idle"
    REPLACED = "replaced"
    STOPPING = "stopping"


class Slot:
    """Keep one worker of one activation running. Call `start()`, then `call()`, then `stop()`."""

    def __init__(
        self,
        instance: int,
        factory: WorkerFactory,
        *,
        watch: WatchSettings,
        restart: RestartSettings,
        scrub: Callable[[str], str] = lambda text: text,
        name: str = "slot",
        on_event: SlotEvent | None = None,
    ) -> None:
        self.instance = instance
        self._on_event = on_event
        self.name = name
        self._factory = factory
        self._watch_settings = watch
        self._policy = RestartPolicy(restart)
        self._scrub = scrub
        self._loop = asyncio.get_running_loop()
        self._state = WorkerState.STARTING
        self._current: PluginWorker | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._suspect = False
        self._stopping = False
        self._parked = False  # idle: no worker until a call asks for one
        self._last_active = self._loop.time()  # the last call's start or end (pings do not count)
        self._delay_until = 0.0
        self._ready_since: float | None = None
        self._last_exit: int | None = None
        self._last_error: str | None = None
        self._last_tail: list[str] = []
        self._keeper: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self._replace_lock = asyncio.Lock()

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the keeper task (owned by this slot, ended by `stop`)."""
        if self._keeper is None:
            self._keeper = self._loop.create_task(self._keep(), name=f"{self.name}-keeper")

    @property
    def state(self) -> WorkerState:
        """The slot's current state."""
        return self._state

    @property
    def current(self) -> PluginWorker | None:
        """The worker taking new calls, if one is ready."""
        return self._current

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a ready worker; return whether there is one."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        return self._ready.is_set()

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout_s: float | None = None,
        result_type: type[Any] | None = None,
        check: Callable[[PluginWorker], None] | None = None,
    ) -> Any:
        """Call the current worker. `check` may veto the worker (identity pinning) by raising.

        Raises CircuitOpenError or UnavailableError when no worker can answer, and whatever
        `PluginWorker.call` raises. A call that times out makes the slot ping its worker at once.
        """
        worker = await self._ready_worker()
        if check is not None:
            check(worker)
        self._last_active = self._loop.time()
        try:
            return await worker.call(method, params, timeout_s=timeout_s, result_type=result_type)
        except CallTimeoutError:
            self._suspect = True
            self._wake.set()
            raise
        finally:
            self._last_active = self._loop.time()

    async def replace(self, factory: WorkerFactory) -> None:
        """Start a worker from `factory`, switch calls to it, then drain and stop the old one.

        Raises what the start raised; the old worker then keeps serving. Later restarts use
        `factory`.
        """
        async with self._replace_lock:
            if self._current is None:
                # Nothing serves: let the keeper start the new one at once.
                self._factory = factory
                self._delay_until = 0.0
                self._wake.set()
                return
            new = await factory()
            self._factory = factory
            self._swap(new)

    async def switch_to(self, worker: PluginWorker, factory: WorkerFactory) -> None:
        """Send calls to the started `worker` now; drain the old one; restart via `factory`."""
        async with self._replace_lock:
            self._factory = factory
            self._swap(worker)

    def reset_circuit(self) -> None:
        """Operator reset: close the circuit and start again without waiting."""
        self._policy.reset()
        self._delay_until = 0.0
        self._wake.set()

    async def stop(self) -> None:
        """Drain in-flight calls, stop every worker of this slot, and end the keeper."""
        self._stopping = True
        self._state = WorkerState.STOPPING
        self._wake.set()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        current, self._current = self._current, None
        self._ready.clear()
        if current is not None:
            await self._drain_and_stop(current)
        while self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        self._state = WorkerState.STOPPED

    def status(self) -> SlotStatus:
        """Return the slot's state, counters and scrubbed stderr tail."""
        worker = self._current
        now = self._loop.time()
        retry: float | None = None
        if self._policy.is_open(now):
            retry = self._policy.retry_after_s(now)
        elif self._state is WorkerState.BACKOFF:
            retry = max(0.0, self._delay_until - now)
        tail = list(worker.stderr_tail) if worker is not None else self._last_tail
        return SlotStatus(
            instance=self.instance,
            state=self._state,
            pid=worker.pid if worker is not None else None,
            restarts=self._policy.restarts,
            last_exit=self._last_exit,
            last_error=self._last_error,
            retry_after_s=retry,
            calls=worker.calls if worker is not None else 0,
            inflight=worker.inflight if worker is not None else 0,
            draining=len(self._draining),
            stderr_tail=[self._scrub(line) for line in tail],
        )

    # -- the keeper ---------------------------------------------------------------------------

    async def _keep(self) -> None:
        while not self._stopping:
            if self._current is None and self._parked:
                await self._wait_for_demand()
                continue
            if self._current is None:
                worker = await self._start_until_ready()
                if worker is not None:
                    self._swap(worker)
            current = self._current
            if current is None:
                continue
            outcome = await self._watch(current)
            if outcome in (_Outcome.REPLACED, _Outcome.STOPPING):
                continue
            if outcome is _Outcome.RECYCLE:
                await self._recycle()
                continue
            if outcome is _Outcome.IDLE:
                self._park(current)
                continue
            await self._lose(current, outcome)

    async def _start_until_ready(self) -> PluginWorker | None:
        """Start a worker, backing off and honouring the circuit; None if one was switched in."""
        while True:
            if self._current is not None:
                return None
            now = self._loop.time()
            if self._policy.is_open(now):
                self._state = WorkerState.CIRCUIT_OPEN
                await self._sleep(self._policy.retry_after_s(now))
                continue
            probing = self._policy.open_until is not None
            if self._delay_until > now:
                self._state = WorkerState.BACKOFF
                await self._sleep(self._delay_until - now)
                continue
            self._state = WorkerState.STARTING
            try:
                worker = await self._factory()
            except _START_ERRORS as exc:
                self._last_error = str(exc)
                if isinstance(exc, WorkerStartError):
                    self._last_tail = exc.stderr_tail
                _log.warning("%s: start failed: %s", self.name, exc)
                self._fail(self._loop.time(), "start_failed", ready_since=None, probing=probing)
                continue
            if probing:
                self._policy.reset()
            if self._current is not None:  # switched in meanwhile: this one is surplus
                self._drain_later(worker)
                return None
            return worker

    async def _sleep(self, delay_s: float) -> None:
        """Sleep up to `delay_s`, waking early for a reset, a replace or a stop."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._wake.wait()

    def _fail(
        self, now: float, reason: str, *, ready_since: float | None, probing: bool = False
    ) -> None:
        self._note("restart", reason)
        if probing:
            self._policy.probe_failed(now)
            self._note("circuit_open", "probe_failed")
            return
        delay = self._policy.record_failure(now, ready_since)
        self._delay_until = now + delay
        if self._policy.is_open(now):
            _log.error("%s: crash loop, circuit open for %.0f s", self.name, delay)
            self._note("circuit_open", "crash_loop")

    def _note(self, kind: str, reason: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, reason)

    def _swap(self, worker: PluginWorker) -> None:
        old = self._current
        self._current = worker
        self._ready_since = self._last_active = self._loop.time()
        self._parked = False  # a switch-in (reconfigure) wakes an idle slot
        self._state = WorkerState.READY
        self._ready.set()
        self._wake.set()
        if old is not None:
            self._drain_later(old)

    async def _watch(self, worker: PluginWorker) -> _Outcome:
        s = self._watch_settings
        closed = self._loop.create_task(worker.wait_closed())
        closed.add_done_callback(lambda _: self._wake.set())
        tick = min(s.ping_interval_s, s.memory_check_interval_s)
        last_ping = last_memory = self._loop.time()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_tick_s(worker, tick)):
                        await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return _Outcome.STOPPING
                if self._current is not worker:
                    return _Outcome.REPLACED
                if closed.done() or not worker.is_alive:
                    return _Outcome.EXITED
                now = self._loop.time()
                if self._is_idle(worker, now):
                    return _Outcome.IDLE
                if self._suspect or (worker.inflight == 0 and now - last_ping >= s.ping_interval_s):
                    self._suspect = False
                    last_ping = now
                    if not await self._answers_ping(worker):
                        return _Outcome.EXITED if not worker.is_alive else _Outcome.HUNG
                if now - last_memory >= s.memory_check_interval_s:
                    last_memory = now
                    outcome = await self._check_memory(worker)
                    if outcome is not None:
                        return outcome
                if (s.max_calls is not None and worker.calls >= s.max_calls) or (
                    s.max_age_s is not None and now - worker.started_at >= s.max_age_s
                ):
                    return _Outcome.RECYCLE
        finally:
            closed.cancel()

    def _is_idle(self, worker: PluginWorker, now: float) -> bool:
        """Whether `worker` has had no call in flight and none for the idle time."""
        idle_s = self._watch_settings.idle_s
        return idle_s > 0 and worker.inflight == 0 and now - self._last_active >= idle_s

    def _next_tick_s(self, worker: PluginWorker, tick_s: float) -> float:
        """How long the watch may sleep: its tick, or less when the idle time ends sooner."""
        idle_s = self._watch_settings.idle_s
        if idle_s <= 0 or worker.inflight:
            return tick_s  # a call in flight keeps it busy; the tick after its end looks again
        left_s = self._last_active + idle_s - self._loop.time()
        return min(tick_s, max(_IDLE_TICK_FLOOR_S, left_s))

    def _park(self, worker: PluginWorker) -> None:
        """Stop an idle worker (not a failure: no restart is counted) until a call wants one.

        Calls see no worker from here on and wake the keeper; the old one stops in the
        background (it has nothing in flight, so it stops at once).
        """
        self._current = None
        self._ready.clear()
        self._parked = True
        self._state = WorkerState.IDLE
        self._last_tail = list(worker.stderr_tail)
        _log.info("%s: pid %d idle; stopped until the next call", self.name, worker.pid)
        self._drain_later(worker)

    async def _wait_for_demand(self) -> None:
        """Sleep while parked: a call, a switch-in or a stop ends it."""
        while self._parked and not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def _answers_ping(self, worker: PluginWorker) -> bool:
        try:
            await worker.ping(self._watch_settings.ping_timeout_s)
        except (ProtocolError, TimeoutError):
            return False
        return True

    async def _check_memory(self, worker: PluginWorker) -> _Outcome | None:
        s = self._watch_settings
        if s.memory_soft_bytes is None and s.memory_hard_bytes is None:
            return None
        try:
            rss = await asyncio.to_thread(_rss, worker.pid)
        except psutil.Error:
            return None  # it exited; the next tick sees the closed channel
        if s.memory_hard_bytes is not None and rss > s.memory_hard_bytes:
            _log.warning(
                "%s: pid %d uses %d bytes, over the hard limit", self.name, worker.pid, rss
            )
            return _Outcome.OVER_MEMORY
        if s.memory_soft_bytes is not None and rss > s.memory_soft_bytes:
            _log.warning("%s: pid %d uses %d bytes, recycling", self.name, worker.pid, rss)
            return _Outcome.RECYCLE
        return None

    async def _recycle(self) -> None:
        try:
            await self.replace(self._factory)
        except _START_ERRORS as exc:
            # The old worker keeps serving; try again after a backoff delay.
            self._last_error = f"recycle failed: {exc}"
            _log.warning("%s: %s", self.name, self._last_error)
            self._fail(self._loop.time(), "recycle_failed", ready_since=self._ready_since)
            await self._sleep(max(0.0, self._delay_until - self._loop.time()))
        else:
            self._note("restart", "recycle")

    async def _lose(self, worker: PluginWorker, outcome: _Outcome) -> None:
        """The worker crashed, hung or blew its memory: kill, reap, record, back off."""
        self._current = None
        self._ready.clear()
        self._last_tail = list(worker.stderr_tail)
        if outcome is _Outcome.HUNG:
            status = await worker.terminate(self._watch_settings.stop_grace_s)
        else:  # exited already (this reaps and releases), or over its hard memory limit
            status = await worker.kill()
        self._last_exit = status
        self._last_error = f"worker {outcome} (exit status {status})"
        _log.warning("%s: pid %d %s, exit status %s", self.name, worker.pid, outcome, status)
        self._fail(self._loop.time(), str(outcome), ready_since=self._ready_since)

    # -- draining -----------------------------------------------------------------------------

    def _drain_later(self, worker: PluginWorker) -> None:
        task = self._loop.create_task(self._drain_and_stop(worker), name=f"{self.name}-drain")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain_and_stop(self, worker: PluginWorker) -> None:
        s = self._watch_settings
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(s.drain_timeout_s):
                await worker.wait_idle()
        try:
            await worker.stop(grace_s=s.stop_grace_s)
        except Exception:
            _log.exception("%s: stopping pid %d failed", self.name, worker.pid)

    async def _ready_worker(self) -> PluginWorker:
        now = self._loop.time()
        if self._stopping:
            raise UnavailableError("the activation is stopping")
        if self._policy.is_open(now):
            raise CircuitOpenError(
                "the worker crash-looped; its circuit is open", self._policy.retry_after_s(now)
            )
        worker = self._current
        if worker is not None and worker.is_alive:
            return worker
        if self._parked:  # the first call after an idle stop: one start, shared by every caller
            self._parked = False
            self._state = WorkerState.STARTING
            self._wake.set()
        # Still READY here means its worker was just lost: the restart may first wait out a
        # backoff longer than the caller's deadline, so answer now (502/503, not a timeout).
        if self._state in (WorkerState.BACKOFF, WorkerState.READY):
            raise UnavailableError("the worker is restarting", max(0.0, self._delay_until - now))
        if await self.wait_ready(self._watch_settings.start_wait_s):
            worker = self._current
            if worker is not None and worker.is_alive:
                return worker
        raise UnavailableError("no worker became ready in time")


def _rss(pid: int) -> int:
    rss: int = psutil.Process(pid).memory_info().rss
    return rss
