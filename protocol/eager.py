"""Start a coroutine at once, in the caller's callback, and give it a task only if it has to wait.

An endpoint starts a coroutine for every incoming call. As a task, each costs a task object and a
later turn of the loop before its first step; most handlers then answer without ever waiting.
Python 3.12's eager tasks run that first step at once; this is the same for Python 3.11: the first
step runs in the reader's callback, and a call that finishes there never gets a task (9% fewer
instructions per sequential round trip, 14% pipelined: docs/performance.md).

Handlers must not be able to tell. During the first step `asyncio.current_task()` is a real task:
a *carrier* from a small pool, which carries the coroutine on if it waits, so that
`asyncio.timeout()` or a TaskGroup entered in the first step binds to the task that later runs
the rest. Every step runs in the call's own copy of the context, as a task's would. A carrier
that was ever cancelled is not reused.

One difference remains: calls that follow each other may see the same `current_task()`. A
handler that keeps its task beyond its own return and cancels it later would cancel whatever
call that carrier runs by then (scoped uses, `asyncio.timeout` and TaskGroup among them, are
unaffected: they end with the call).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any, Final

# Private, but present in Python 3.11 to 3.14; without them every coroutine simply gets a task.
_enter_task = getattr(asyncio.tasks, "_enter_task", None)
_leave_task = getattr(asyncio.tasks, "_leave_task", None)

# Idle carriers kept for the next calls; one that finishes when this many wait already ends.
MAX_IDLE_CARRIERS: Final = 8

_Job = tuple[Coroutine[Any, Any, None], contextvars.Context, Any]


class EagerStarter:
    """Run coroutines' first steps at once; carry on those that wait in pooled tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._name = name
        self._idle: list[_Carrier] = []
        # None once closed (or without the private functions): every coroutine gets a task.
        self._enter = _enter_task if _leave_task is not None else None

    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run `coro` until it first waits: None if it finished, else the task carrying it on.

        Inside a task (not a callback), `coro` gets a task of its own and starts later, as
        with `loop.create_task`.
        """
        loop = self._loop
        enter = self._enter
        if enter is None or _leave_task is None:
            return loop.create_task(coro, name=self._name)
        idle = self._idle
        if not idle:
            idle.append(_Carrier(self))
        carrier = idle[-1]  # stays in the pool unless the coroutine waits
        task = carrier.task
        try:
            enter(loop, task)
        except RuntimeError:  # called from a task (not asyncio.current_task(): it costs more)
            return loop.create_task(coro, name=self._name)
        context = contextvars.copy_context()
        try:
            yielded = context.run(coro.send, None)
        except StopIteration:
            if task.cancelling():  # the coroutine cancelled its own task: retire the carrier
                self._leave_pool(carrier)
            return None
        except BaseException:
            if task.cancelling():
                self._leave_pool(carrier)
            raise
        finally:
            _leave_task(loop, task)
        self._leave_pool(carrier)
        carrier.carry((coro, context, yielded))
        return task

    def close(self) -> list[asyncio.Task[None]]:
        """End the idle carriers, and pool no more; return their tasks, to await."""
        self._enter = None
        idle, self._idle = self._idle, []
        for carrier in idle:
            carrier.task.cancel()
        return [carrier.task for carrier in idle]

    def _leave_pool(self, carrier: _Carrier) -> None:
        if carrier in self._idle:  # not if `close` emptied the pool meanwhile
            self._idle.remove(carrier)

    def _rest(self, carrier: _Carrier) -> bool:
        """Keep a carrier that is free again for later calls; return whether it was kept."""
        task = carrier.task
        if self._enter is None or task.cancelling() or task.done():
            return False
        if len(self._idle) >= MAX_IDLE_CARRIERS:
            return False
        self._idle.append(carrier)
        return True

    def _new_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self._loop.create_task(coro, name=self._name)


class _Carrier:
    """A task that waits for a started coroutine to carry on, then for the next."""

    __slots__ = ("_job", "_starter", "_wake", "task")

    def __init__(self, starter: EagerStarter) -> None:
        self._starter = starter
        self._job: _Job | None = None
        self._wake: asyncio.Future[None] = starter._loop.create_future()
        self.task = starter._new_task(self._run())
        self.task.add_done_callback(self._ended)

    def carry(self, job: _Job) -> None:
        self._job = job
        self._wake.set_result(None)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs `_run`: end the call it was given
        # the way a cancelled task would have (its handler sees CancelledError, its `finally`
        # runs), instead of leaving it suspended for ever.
        job, self._job = self._job, None
        if job is not None:
            coro, context, _ = job
            with contextlib.suppress(BaseException):
                context.run(coro.throw, asyncio.CancelledError())
            coro.close()

    async def _run(self) -> None:
        while True:
            thrown: BaseException | None = None
            try:
                await self._wake
            except asyncio.CancelledError as exc:
                if self._job is None:
                    raise  # ended while idle
                thrown = exc  # cancelled between its first step and this one: pass it on
            assert self._job is not None
            (coro, context, yielded), self._job = self._job, None
            self._wake = self._starter._loop.create_future()
            await _resume(coro, context, yielded, thrown)
            if not self._starter._rest(self):
                return


@types.coroutine
def _resume(
    coro: Coroutine[Any, Any, None],
    context: contextvars.Context,
    yielded: Any,
    thrown: BaseException | None,
) -> Generator[Any, Any, None]:
    """Drive `coro` on from where it waited (it yielded `yielded`), each step in `context`.

    What the task sends or throws in goes on to `coro`, as `yield from` would pass it.
    """
    while True:
        if thrown is None:
            try:
                sent = yield yielded
            except BaseException as error:  # every throw belongs to `coro`
                thrown = error
                continue
            try:
                yielded = context.run(coro.send, sent)
            except StopIteration:
                return
        else:
            pending, thrown = thrown, None
            try:
                yielded = context.run(coro.throw, pending)
            except StopIteration:
                return
