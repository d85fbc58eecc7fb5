"""The database check of `corral serve --check`: reachable, and the schema this code's.

`check_database` blocks (it runs its own event loop in a thread), so a synchronous caller such
as `serve_check` can use it whether or not a loop is running.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Final

from .connect import connect, redact
from .errors import StoreError
from .migrations import require_current

DEFAULT_TIMEOUT_S: Final = 10.0


def check_database(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[str | None, str]:
    """Return (problem or None, what passed): connect and compare the schema version. Blocks."""
    outcome: list[tuple[str | None, str]] = []

    def run() -> None:
        outcome.append(asyncio.run(_check(url, timeout_s)))

    thread = threading.Thread(target=run, name="corral-store-check", daemon=True)
    thread.start()
    thread.join(timeout_s * 2)
    if not outcome:
        return f"{redact(url)}: no answer within {timeout_s * 2:g} s", ""
    return outcome[0]


async def _check(url: str, timeout_s: float) -> tuple[str | None, str]:
    try:
        async with asyncio.timeout(timeout_s):
            conn = await connect(url, timeout_s=timeout_s)
            try:
                schema = await require_current(conn)
            finally:
                await conn.close()
    except StoreError as exc:
        return str(exc), ""
    except TimeoutError:
        return f"{redact(url)}: no answer within {timeout_s:g} s", ""
    return None, f"{redact(url)}: reachable, schema version {schema.current}"
