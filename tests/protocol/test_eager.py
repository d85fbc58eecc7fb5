"""protocol.eager: first steps at once, the rest in pooled tasks, as tasks would behave.

`start` is called from loop callbacks here (`in_callback`), as an endpoint calls it from its
transport's read callback; from inside a task it must fall back to an ordinary task.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from protocol.eager import MAX_IDLE_CARRIERS, EagerStarter

Started = asyncio.Task[None] | None
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def in_callback(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a loop callback (no task is current there) and return what it returned."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon(run)
    return await done


async def start(starter: EagerStarter, coro: Coroutine[Any, Any, None]) -> Started:
    started: Started = await in_callback(lambda: starter.start(coro))
    return started


async def sleep_noting_cancel(outcome: list[str]) -> None:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        outcome.append("cancelled")
        raise


@pytest.fixture
async def starter() -> Any:
    starter = EagerStarter(asyncio.get_running_loop(), "test")
    yield starter
    for task in starter.close():
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_coroutine_that_does_not_wait_finishes_inside_start(starter: EagerStarter) -> None:
    seen: list[Any] = []

    async def handler() -> None:
        seen.append(asyncio.current_task())

    def start_and_look() -> tuple[Started, list[Any]]:
        return starter.start(handler()), list(seen)

    task, seen_when_start_returned = await in_callback(start_and_look)
    assert task is None
    assert len(seen_when_start_returned) == 1
    assert isinstance(seen_when_start_returned[0], asyncio.Task)  # a task was current, as asked


async def test_a_coroutine_that_waits_goes_on_in_the_task_current_in_its_first_step(
    starter: EagerStarter,
) -> None:
    current: list[Any] = []
    release = asyncio.Event()

    async def handler() -> None:
        current.append(asyncio.current_task())
        await release.wait()
        current.append(asyncio.current_task())

    task = await start(starter, handler())
    assert task is not None and not task.done()
    release.set()
    await asyncio.sleep(0.01)
    assert current == [task, task]


async def test_timeout_entered_in_the_first_step_cancels_the_right_task(
    starter: EagerStarter,
) -> None:
    outcome: list[str] = []

    async def handler() -> None:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            outcome.append("timed out")

    task = await start(starter, handler())
    assert task is not None
    async with asyncio.timeout(2):
        while not outcome:
            await asyncio.sleep(0.005)
    assert outcome == ["timed out"]
    assert not task.done()  # the carrier survived, uncancelled, and waits for the next call
    assert task.cancelling() == 0


async def test_taskgroup_in_a_handler_works(starter: EagerStarter) -> None:
    results: list[int] = []

    async def child(n: int) -> None:
        await asyncio.sleep(0)
        results.append(n)

    async def handler() -> None:
        async with asyncio.TaskGroup() as group:
            for n in range(3):
                group.create_task(child(n))

    assert await start(starter, handler()) is not None
    async with asyncio.timeout(2):
        while len(results) < 3:
            await asyncio.sleep(0.005)
    assert sorted(results) == [0, 1, 2]


async def test_each_call_has_its_own_context_across_its_steps(starter: EagerStarter) -> None:
    seen: list[str] = []
    release = asyncio.Event()

    async def setter(value: str) -> None:
        seen.append(var.get())
        var.set(value)
        await release.wait()
        seen.append(var.get())

    first = await start(starter, setter("first"))
    second = await start(starter, setter("second"))
    release.set()
    await asyncio.sleep(0.01)
    assert first is not None and second is not None
    # Each saw none of the other's value, and kept its own across waiting.
    assert sorted(seen) == ["first", "second", "unset", "unset"]
    assert var.get() == "unset"  # and nothing leaked into the caller's context

    async def reader() -> None:
        seen.append(var.get())

    seen.clear()
    assert await start(starter, reader()) is None  # on a carrier the setters used
    assert seen == ["unset"]


async def test_cancelling_a_carried_call_reaches_the_coroutine_and_retires_the_carrier(
    starter: EagerStarter,
) -> None:
    outcome: list[str] = []

    task = await start(starter, sleep_noting_cancel(outcome))
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]

    async def quick() -> None:
        outcome.append(repr(asyncio.current_task()))

    await start(starter, quick())
    assert repr(task) != outcome[-1]  # a cancelled carrier is never reused


async def test_a_cancel_before_the_carrier_wakes_is_passed_on(starter: EagerStarter) -> None:
    outcome: list[str] = []

    def start_and_cancel() -> Started:
        task = starter.start(sleep_noting_cancel(outcome))
        assert task is not None
        task.cancel()  # before the carrier's task has taken the call over
        return task

    task = await in_callback(start_and_cancel)
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # the task's done-callbacks, which end the call it never took over
    assert outcome == ["cancelled"]


async def test_start_inside_a_task_makes_an_ordinary_task(starter: EagerStarter) -> None:
    ran: list[bool] = []

    async def handler() -> None:
        ran.append(True)

    task = starter.start(handler())  # here a task is current: no eager step
    assert task is not None and ran == []
    await task
    assert ran == [True]


async def test_idle_carriers_are_bounded_and_close_ends_them(starter: EagerStarter) -> None:
    release = asyncio.Event()

    async def handler() -> None:
        await release.wait()

    tasks = [await start(starter, handler()) for _ in range(MAX_IDLE_CARRIERS + 5)]
    assert all(task is not None for task in tasks)
    assert len({id(task) for task in tasks}) == len(tasks)  # busy carriers are never shared
    release.set()
    await asyncio.sleep(0.01)
    idle = [task for task in tasks if task is not None and not task.done()]
    assert len(idle) == MAX_IDLE_CARRIERS  # the rest ended
    for task in starter.close():
        with pytest.raises(asyncio.CancelledError):
            await task
    assert all(task is not None and task.done() for task in tasks)
