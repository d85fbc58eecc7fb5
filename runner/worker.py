"""`PluginWorker`: the host's handle on one running worker process.

It starts the process through a `Spawner`, performs the handshake, serves host functions to the
worker, relays its stderr into the host log, and stops it in stages. Restart policy, health and
limits belong to the supervisor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from protocol import (
    HTTP_REQUEST_METHOD,
    INITIALIZE_METHOD,
    PING_METHOD,
    PROTOCOL_VERSION,
    SHUTDOWN_METHOD,
    Endpoint,
    ErrorCode,
    InitializeParams,
    InitializeResult,
    Limits,
    ProtocolError,
    RemoteError,
    VersionMismatchError,
    check_version,
)
from protocol.endpoint import Handler

from .errors import WorkerStartError
from .logs import log_context
from .spawn import LaunchRequest, OwnChild, SpawnedWorker, Spawner, WorkerProcess

_log = logging.getLogger(__name__)
CallObserver = Callable[[str, str, float], None]  # (plugin id, method, seconds) after each call

STDERR_LINE_BYTES: Final = 8192
STDERR_TAIL_LINES: Final = 20
STDERR_LINES_PER_SECOND: Final = 200
STDERR_SKIM_BYTES: Final = 64 * 1024
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


async def _unavailable(params: Any) -> Any:
    raise RemoteError(ErrorCode.UNAVAILABLE, "outbound HTTP is not offered by this host yet")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything needed to start one worker of one activation."""

    plugin_id: str
    tenant_id: str
    launch: LaunchRequest
    config: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    start_timeout_s: float = 10.0
    config_digest: str = ""
    # Masks secret config values in stderr lines before they are kept or re-logged: a plugin
    # that logs its own API token must not put it in the host's log.
    scrub: Callable[[str], str] = field(default=lambda text: text)


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """What a worker is pinned to; a call for one identity never goes to another's worker."""

    tenant_id: str
    plugin_id: str
    plugin_version: str
    config_digest: str


class PluginWorker:
    """A started, initialized worker. Create it with `await PluginWorker.start(...)`."""

    def __init__(
        self,
        spec: WorkerSpec,
        spawned: SpawnedWorker,
        endpoint: Endpoint,
        on_release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self._on_release = on_release
        self._process: WorkerProcess = spawned.process
        self._endpoint = endpoint
        self.info: InitializeResult | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.inflight = 0
        self.calls = 0
        self.started_at = asyncio.get_running_loop().time()
        self.observe_call: CallObserver | None = None  # metrics: set by the supervisor
        # Futures of `wait_idle` callers, set when `inflight` drops to 0 (not an Event: setting
        # and clearing one would cost every call two Python calls more).
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._relay = asyncio.get_running_loop().create_task(
            self._relay_stderr(spawned.stderr), name=f"stderr-{spawned.process.pid}"
        )

    @classmethod
    async def start(
        cls,
        spec: WorkerSpec,
        spawner: Spawner,
        *,
        host_functions: Mapping[str, Handler] | None = None,
        on_release: Callable[[], Awaitable[None]] | None = None,
    ) -> PluginWorker:
        """Spawn and initialize a worker; raise WorkerStartError (or VersionMismatchError).

        `on_release` runs once the worker is stopped and reaped (or failed to start), to free
        what was prepared for it (scratch, uid, cgroup).
        """
        try:
            spawned = await spawner.spawn(spec.launch)
        except BaseException as exc:
            if on_release is not None:
                await on_release()
            if isinstance(exc, OSError):
                raise WorkerStartError(spec.plugin_id, f"cannot spawn: {exc}") from exc
            raise
        endpoint = Endpoint(
            spawned.reader,
            spawned.writer,
            name=f"{spec.plugin_id}[{spawned.process.pid}]",
            max_frame_bytes=spec.limits.max_frame_bytes,
            call_timeout_s=spec.limits.call_timeout_s,
            logger=_log,
        )
        functions: dict[str, Handler] = {HTTP_REQUEST_METHOD: _unavailable}
        functions.update(host_functions or {})
        for method, handler in functions.items():
            endpoint.register(method, handler)
        # The stderr relay and the endpoint's tasks log as this worker, not as whoever started it.
        pid = spawned.process.pid
        with log_context(
            request_id=None, tenant=spec.tenant_id, plugin=spec.plugin_id, worker_pid=pid
        ):
            worker = cls(spec, spawned, endpoint, on_release)
            endpoint.start()
        try:
            worker.info = await worker._handshake()
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def _handshake(self) -> InitializeResult:
        spec = self.spec
        params = InitializeParams(
            protocol_version=PROTOCOL_VERSION,
            tenant_id=spec.tenant_id,
            plugin_id=spec.plugin_id,
            config=dict(spec.config),
            limits=spec.limits,
        )
        try:
            result: InitializeResult = await self._endpoint.request(
                INITIALIZE_METHOD,
                params,
                timeout_s=spec.start_timeout_s,
                result_type=InitializeResult,
            )
        except RemoteError as exc:
            if exc.code == ErrorCode.VERSION_MISMATCH and isinstance(exc.data, dict):
                raise VersionMismatchError(PROTOCOL_VERSION, int(exc.data["worker"])) from exc
            raise self._start_error(exc.message) from exc
        except ProtocolError as exc:
            await self._settle_stderr()
            raise self._start_error(str(exc)) from exc
        check_version(result.protocol_version)
        if result.plugin_id != spec.plugin_id:
            raise self._start_error(f"worker answered as {result.plugin_id!r}")
        return result

    def _start_error(self, reason: str) -> WorkerStartError:
        return WorkerStartError(self.spec.plugin_id, reason, list(self.stderr_tail))

    async def _settle_stderr(self) -> None:
        # A worker that died during start usually said why on stderr: give the relay a moment.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(0.5):
                await asyncio.shield(self._relay)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped (negative: killed by that signal)."""
        return self._process.returncode

    @property
    def is_alive(self) -> bool:
        """Whether the channel is open and the process has not exited."""
        return not self._endpoint.is_closed and self._process.returncode is None

    @property
    def identity(self) -> WorkerIdentity:
        """The (tenant, plugin, version, config digest) this worker serves."""
        version = self.info.plugin_version if self.info is not None else ""
        spec = self.spec
        return WorkerIdentity(spec.tenant_id, spec.plugin_id, version, spec.config_digest)

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout_s: float | None = None,
        result_type: type[Any] | None = None,
    ) -> Any:
        """Call a method on the worker (see `Endpoint.request` for errors raised)."""
        self.inflight += 1
        self.calls += 1
        observe = self.observe_call
        started = 0.0 if observe is None else time.perf_counter()
        try:
            return await self._endpoint.request(
                method, params, timeout_s=timeout_s, result_type=result_type
            )
        finally:
            self.inflight -= 1
            if not self.inflight and self._idle_waiters:
                for waiter in self._idle_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            if observe is not None:
                observe(self.spec.plugin_id, method, time.perf_counter() - started)

    async def wait_idle(self) -> None:
        """Wait until no call is in flight (bound it with `asyncio.timeout`)."""
        while self.inflight:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._idle_waiters.remove(waiter)

    async def ping(self, timeout_s: float) -> None:
        """Raise unless the worker answers a ping within `timeout_s`."""
        await self._endpoint.request(PING_METHOD, None, timeout_s=timeout_s)

    async def stop(self, grace_s: float = 2.0) -> int:
        """Ask the worker to exit, then SIGTERM, then SIGKILL; always reap; return its status."""
        try:
            with contextlib.suppress(ProtocolError, TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._endpoint.request(SHUTDOWN_METHOD, None, timeout_s=grace_s)
                    return await self._process.wait()
            return await self._escalate(grace_s)
        finally:
            await self._release()

    async def terminate(self, grace_s: float = 2.0) -> int:
        """SIGTERM the worker (it is not answering), SIGKILL after `grace_s`; reap; release."""
        try:
            return await self._escalate(grace_s)
        finally:
            await self._release()

    async def _escalate(self, grace_s: float) -> int:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            self._signal(sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    return await self._process.wait()
        return await self._process.wait()

    async def kill(self) -> int:
        """SIGKILL the worker at once, reap it and release its resources."""
        try:
            self._signal(signal.SIGKILL)
            return await self._process.wait()
        finally:
            await self._release()

    def _signal(self, sig: int) -> None:
        if self._process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self._process.send_signal(sig)
        if isinstance(self._process, OwnChild):
            # Our own child leads its own process group: signal any stragglers in it too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self._process.signal_group(sig)

    async def _release(self) -> None:
        release, self._on_release = self._on_release, None
        try:
            await self._release_channel()
        finally:
            if release is not None:
                await release()

    async def _release_channel(self) -> None:
        await self._endpoint.aclose("worker stopped")
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._relay)
        self._relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay

    async def wait_closed(self) -> None:
        """Wait until the worker's channel closes (it exited, crashed or broke the protocol)."""
        await self._endpoint.wait_closed()

    @property
    def close_reason(self) -> str | None:
        """Why the channel closed, if it has."""
        return self._endpoint.close_reason

    async def _relay_stderr(self, stderr: asyncio.StreamReader) -> None:
        """Re-log the worker's stderr under its plugin id and pid, bounded in size and rate.

        Past the per-second line budget the rest of the second is skimmed in large reads and
        only counted, so a flooding worker costs the host little CPU and no memory.
        """
        loop = asyncio.get_running_loop()
        budget, window_start, dropped = STDERR_LINES_PER_SECOND, loop.time(), 0
        while True:
            now = loop.time()
            if now - window_start >= 1.0:
                if dropped:
                    _log.warning(
                        "plugin %s pid %d: %d stderr lines dropped (rate limit)",
                        self.spec.plugin_id,
                        self.pid,
                        dropped,
                    )
                budget, window_start, dropped = STDERR_LINES_PER_SECOND, now, 0
            if budget <= 0:
                chunk = await stderr.read(STDERR_SKIM_BYTES)
                if not chunk:
                    break
                dropped += chunk.count(b"\n")
                continue
            try:
                raw = await stderr.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    break
                raw = exc.partial
            except asyncio.LimitOverrunError as exc:
                raw = await stderr.read(max(exc.consumed, 1))
            line = self.spec.scrub(raw[:STDERR_LINE_BYTES].decode("utf-8", "replace").rstrip())
            if line:
                budget -= 1
                self.stderr_tail.append(line)
                self._relog(line)

    def _relog(self, line: str) -> None:
        level, message = logging.INFO, line
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "msg" in record:
                    level = _LEVELS.get(str(record.get("level")), logging.INFO)
                    message = str(record["msg"])
                    if "exc" in record:
                        message = f"{message}\n{record['exc']}"
        _log.log(
            level,
            "plugin %s pid %d: %s",
            self.spec.plugin_id,
            self.pid,
            message,
            extra={"plugin_id": self.spec.plugin_id, "tenant_id": self.spec.tenant_id},
        )
