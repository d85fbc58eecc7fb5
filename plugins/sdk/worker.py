"""The worker runtime: claim stdio, answer `initialize`, serve one activation, exit cleanly.

Run as `python -m plugins.sdk.worker BUNDLE_DIR` (or as the entry module of the sandbox bootstrap).
fd 0 and fd 1 carry frames only; everything else a plugin prints ends up on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from protocol import (
    INITIALIZE_METHOD,
    PING_METHOD,
    PROTOCOL_VERSION,
    SHUTDOWN_METHOD,
    Endpoint,
    ErrorCode,
    InitializeParams,
    InitializeResult,
    Manifest,
    ManifestError,
    RemoteError,
    categories,
    load_manifest,
    loop_factory,
    open_pipe_streams,
    tune_allocator,
)

from . import logs
from .context import Context
from .plugin import Plugin, PluginDefinitionError

_log = logging.getLogger("corral.worker")


class WorkerRuntime:
    """Serve one plugin bundle over an endpoint: handshake, dispatch, shutdown."""

    def __init__(self, bundle_dir: Path, endpoint: Endpoint) -> None:
        self._bundle_dir = bundle_dir
        self._endpoint = endpoint
        self._instances: list[Any] = []
        self._initialized = False
        self._stopping = asyncio.Event()
        endpoint.register(INITIALIZE_METHOD, self._initialize, params_type=InitializeParams)
        endpoint.register(SHUTDOWN_METHOD, self._shutdown)
        endpoint.register(PING_METHOD, self._ping)

    async def serve(self) -> int:
        """Serve until the host sends `shutdown` or closes the channel; return the exit status."""
        self._endpoint.start()
        waits = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._endpoint.wait_closed()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await self._close_instances()
            await self._endpoint.aclose("worker exiting")
        return 0

    async def _ping(self, params: Any) -> str:
        return "pong"

    async def _shutdown(self, params: Any) -> None:
        self._stopping.set()

    async def _initialize(self, params: InitializeParams) -> InitializeResult:
        if self._initialized:
            raise RemoteError(ErrorCode.INVALID_PARAMS, "already initialized")
        if params.protocol_version != PROTOCOL_VERSION:
            raise RemoteError(
                ErrorCode.VERSION_MISMATCH,
                f"protocol version mismatch: host speaks {params.protocol_version}, "
                f"worker speaks {PROTOCOL_VERSION}",
                {"host": params.protocol_version, "worker": PROTOCOL_VERSION},
            )
        manifest = self._load_manifest(params.plugin_id)
        plugin = self._load_plugin(manifest)
        self._endpoint.max_frame_bytes = params.limits.max_frame_bytes
        ctx = Context(
            tenant_id=params.tenant_id,
            plugin_id=manifest.id,
            config=params.config,
            endpoint=self._endpoint,
        )
        methods: list[str] = []
        for impl in plugin.implementations:
            try:
                instance = impl.cls(ctx)
                start = getattr(instance, "start", None)
                if start is not None:
                    await start()
            except RemoteError:
                raise
            except Exception as exc:
                _log.exception("plugin %s failed to start %s", manifest.id, impl.kind)
                raise RemoteError(
                    ErrorCode.PLUGIN_ERROR, f"{impl.kind} failed to start: {type(exc).__name__}"
                ) from exc
            self._instances.append(instance)
            spec = categories.get(impl.kind)
            for name, method in spec.methods.items():
                wire = spec.wire_name(name)
                handler = _typed_handler(wire, getattr(instance, name), method.result)
                self._endpoint.register(wire, handler, params_type=method.params)
                methods.append(wire)
        self._initialized = True
        _log.info("serving %s %s for tenant %s", manifest.id, manifest.version, params.tenant_id)
        return InitializeResult(
            protocol_version=PROTOCOL_VERSION,
            plugin_id=manifest.id,
            plugin_version=manifest.version,
            categories=[impl.kind for impl in plugin.implementations],
            methods=methods,
        )

    def _load_manifest(self, plugin_id: str) -> Manifest:
        try:
            manifest = load_manifest(self._bundle_dir)
        except ManifestError as exc:
            raise RemoteError(ErrorCode.PLUGIN_ERROR, str(exc)) from exc
        if manifest.id != plugin_id:
            raise RemoteError(
                ErrorCode.INVALID_PARAMS,
                f"this worker serves {manifest.id!r}, not {plugin_id!r}",
            )
        return manifest

    def _load_plugin(self, manifest: Manifest) -> Plugin:
        bundle = str(self._bundle_dir)
        if bundle not in sys.path:
            sys.path.insert(0, bundle)
        try:
            module = importlib.import_module(manifest.entrypoint)
        except PluginDefinitionError as exc:
            # The SDK's own account of a bad bundle (a provider.json problem, say): it quotes no
            # tenant data, and the operator needs it more than the exception's type.
            raise RemoteError(
                ErrorCode.PLUGIN_ERROR, f"cannot load {manifest.entrypoint!r}: {exc}"
            ) from exc
        except Exception as exc:
            _log.exception("cannot import %s", manifest.entrypoint)
            raise RemoteError(
                ErrorCode.PLUGIN_ERROR,
                f"cannot import {manifest.entrypoint!r}: {type(exc).__name__}",
            ) from exc
        plugin = getattr(module, "plugin", None)
        if not isinstance(plugin, Plugin):
            raise RemoteError(
                ErrorCode.PLUGIN_ERROR,
                f"{manifest.entrypoint!r} does not define `plugin = sdk.Plugin()`",
            )
        declared = {c.kind for c in manifest.categories}
        shipped = {impl.kind for impl in plugin.implementations}
        if declared != shipped:
            raise RemoteError(
                ErrorCode.PLUGIN_ERROR,
                f"manifest declares {sorted(declared)} but the plugin implements {sorted(shipped)}",
            )
        return plugin

    async def _close_instances(self) -> None:
        instances, self._instances = self._instances, []
        for instance in instances:
            close = getattr(instance, "close", None)
            if close is None:
                continue
            try:
                async with asyncio.timeout(5.0):
                    await close()
            except Exception:
                _log.exception("plugin close() failed")


def _typed_handler(
    wire: str, bound: Callable[[Any], Awaitable[Any]], result_type: type[Any] | None
) -> Callable[[Any], Awaitable[Any]]:
    async def handle(params: Any) -> Any:
        try:
            result = await bound(params)
        except (RemoteError, TimeoutError):
            raise
        except Exception as exc:
            # The traceback stays in this worker's log; only the exception type crosses the wire,
            # because its message may carry data the plugin was handling.
            _log.exception("%s failed", wire)
            raise RemoteError(
                ErrorCode.PLUGIN_ERROR, f"{wire} raised {type(exc).__name__}"
            ) from exc
        if result_type is None or isinstance(result, result_type):
            return None if result_type is None else result
        try:
            return msgspec.convert(result, result_type, from_attributes=True)
        except msgspec.ValidationError as exc:
            raise RemoteError(
                ErrorCode.PLUGIN_ERROR, f"plugin returned a bad result: {exc}"
            ) from exc

    return handle


def claim_stdio() -> tuple[int, int]:
    """Move the channel off fds 0 and 1; return (read_fd, write_fd).

    Afterwards fd 0 reads EOF and fd 1 (and `sys.stdout`) point at stderr, so a stray `print()` or a
    C library writing to stdout cannot corrupt the frame stream.
    """
    read_fd, write_fd = os.dup(0), os.dup(1)
    empty_r, empty_w = os.pipe()
    os.close(empty_w)
    os.dup2(empty_r, 0)
    os.close(empty_r)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return read_fd, write_fd


async def run(bundle_dir: Path, read_fd: int, write_fd: int) -> int:
    """Serve the bundle over the two fds until shutdown or EOF; return the exit status."""
    reader, writer = await open_pipe_streams(read_fd, write_fd)
    endpoint = Endpoint(reader, writer, name="worker", logger=_log)
    return await WorkerRuntime(bundle_dir, endpoint).serve()


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m plugins.sdk.worker BUNDLE_DIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m plugins.sdk.worker BUNDLE_DIR", file=sys.stderr)
        return 2
    read_fd, write_fd = claim_stdio()
    tune_allocator()
    logs.configure(getattr(logging, os.environ.get("CORRAL_LOG_LEVEL", "INFO").upper(), 20))
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        return runner.run(run(Path(args[0]).resolve(), read_fd, write_fd))
    return 130


if __name__ == "__main__":
    sys.exit(main())
