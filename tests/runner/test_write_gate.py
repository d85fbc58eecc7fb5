"""`WriteGate`: writes share it, a reload has it alone, and a waiting reload is not starved."""

from __future__ import annotations

import asyncio

from runner.write_gate import WriteGate


async def _ticks(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_shared_holders_enter_together() -> None:
    gate = WriteGate()
    async with gate.shared(), gate.shared():
        assert gate.shared_holders == 2
    assert gate.shared_holders == 0


async def test_exclusive_waits_for_shared_holders_and_keeps_new_ones_out() -> None:
    gate = WriteGate()
    order: list[str] = []

    async def exclusive() -> None:
        async with gate.exclusive():
            order.append("exclusive")

    async def late_writer() -> None:
        async with gate.shared():
            order.append("late writer")

    async with asyncio.TaskGroup() as tasks:
        async with gate.shared():
            tasks.create_task(exclusive())
            await _ticks()
            assert gate.is_closed and order == []
            tasks.create_task(late_writer())
            await _ticks()
            assert order == []
        order.append("writer left")
    assert order == ["writer left", "exclusive", "late writer"]


async def test_a_cancelled_holder_releases_the_gate() -> None:
    gate = WriteGate()
    entered = asyncio.Event()

    async def writer() -> None:
        async with gate.shared():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(writer())
    await entered.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(5):
        async with gate.exclusive():
            assert gate.shared_holders == 0
