from __future__ import annotations

import asyncio
from typing import Any

from protocol.deadlines import Deadlines


async def test_deadlines_expire_in_order_on_one_timer() -> None:
    loop = asyncio.get_running_loop()
    expired: list[tuple[int, Any]] = []
    deadlines = Deadlines(lambda key, value: expired.append((key, value)))
    now = loop.time()
    deadlines.add(1, now + 0.05, "one")
    deadlines.add(2, now + 0.01, "two")  # earlier than the armed timer: re-arms
    deadlines.add(3, now + 0.03, "three")
    deadlines.discard(3)
    await asyncio.sleep(0.1)
    assert expired == [(2, "two"), (1, "one")]
    deadlines.close()


async def test_closed_deadlines_never_fire() -> None:
    expired: list[int] = []
    deadlines = Deadlines(lambda key, value: expired.append(key))
    deadlines.add(1, asyncio.get_running_loop().time() + 0.01, None)
    deadlines.close()
    await asyncio.sleep(0.05)
    assert expired == []
