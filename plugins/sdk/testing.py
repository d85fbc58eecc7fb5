"""Serve a plugin bundle in-process over a real channel, for plugin authors' tests.

The plugin runs unconfined in the test's own process, so this tests plugin logic through the
protocol, not isolation. Host functions (such as `http.request`) are whatever the test supplies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from protocol import (
    INITIALIZE_METHOD,
    PROTOCOL_VERSION,
    Endpoint,
    InitializeParams,
    InitializeResult,
)
from protocol.endpoint import Handler

from .worker import WorkerRuntime


async def stream_pair() -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
]:
    """Return two connected (reader, writer) pairs over a socketpair."""
    left, right = socket.socketpair()
    return await asyncio.open_connection(sock=left), await asyncio.open_connection(sock=right)


@contextlib.asynccontextmanager
async def serve_bundle(
    bundle_dir: Path,
    *,
    plugin_id: str,
    tenant_id: str = "tenant-a",
    config: Mapping[str, Any] | None = None,
    host_functions: Mapping[str, Handler] | None = None,
    protocol_version: int = PROTOCOL_VERSION,
) -> AsyncIterator[tuple[Endpoint, InitializeResult]]:
    """Start the bundle's runtime in this process; yield the host's endpoint and the handshake."""
    (host_r, host_w), (worker_r, worker_w) = await stream_pair()
    runtime = WorkerRuntime(bundle_dir, Endpoint(worker_r, worker_w, name="worker"))
    host = Endpoint(host_r, host_w, name="host")
    for method, handler in (host_functions or {}).items():
        host.register(method, handler)
    host.start()
    serving = asyncio.get_running_loop().create_task(runtime.serve())
    try:
        params = InitializeParams(
            protocol_version=protocol_version,
            tenant_id=tenant_id,
            plugin_id=plugin_id,
            config=dict(config or {}),
        )
        info = await host.request(INITIALIZE_METHOD, params, result_type=InitializeResult)
        yield host, info
    finally:
        await host.aclose()
        async with asyncio.timeout(5):
            await serving
