"""`WriteGate`: many administrative writes at once, or one reload alone.

API writes (config, activation, install, uninstall) hold the gate shared and run concurrently, as
before; a reload holds it exclusively, so it never interleaves with one. What each side does under
the gate is theirs (`runner.control`, `runner.reload`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Concatenate, ParamSpec, Protocol, TypeVar


class WriteGate:
    """A shared/exclusive lock for tasks of one event loop. Not re-entrant on either side.

    A waiting exclusive holder stops new shared holders from entering (the inner lock is FIFO),
    so a stream of writes cannot starve a reload. Release never awaits, so a cancelled holder
    always releases.
    """

    def __init__(self) -> None:
        self._entry = asyncio.Lock()  # held by the exclusive side for its whole turn
        self._shared = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def shared_holders(self) -> int:
        """How many shared holders are inside now."""
        return self._shared

    @property
    def is_closed(self) -> bool:
        """Whether an exclusive holder is inside or waiting (new shared holders wait)."""
        return self._entry.locked()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Hold the gate alongside other shared holders; wait while an exclusive one is in."""
        async with self._entry:
            self._shared += 1
            self._idle.clear()
        try:
            yield
        finally:
            self._shared -= 1
            if self._shared == 0:
                self._idle.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the gate alone: wait for the shared holders inside to leave, keep new ones out.

        The wait is as long as the writes in flight take; each bounds its own worker waits.
        """
        async with self._entry:
            await self._idle.wait()
            yield


class Gated(Protocol):
    """An object whose writes go through `writes`."""

    @property
    def writes(self) -> WriteGate:
        """The gate its writes hold shared."""
        ...


_S = TypeVar("_S", bound=Gated)
_P = ParamSpec("_P")
_T = TypeVar("_T")


def shared_write(
    method: Callable[Concatenate[_S, _P], Awaitable[_T]],
) -> Callable[Concatenate[_S, _P], Awaitable[_T]]:
    """Make an async method run with its object's `writes` gate held shared.

    A method so decorated must not call another one (the gate is not re-entrant).
    """

    @functools.wraps(method)
    async def gated(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self.writes.shared():
            return await method(self, *args, **kwargs)

    return gated
