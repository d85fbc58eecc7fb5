"""One side of an RPC session: message ids, pending calls, dispatch of incoming calls, cancellation.

The same class serves the host and the worker over any asyncio StreamReader/StreamWriter pair.
Bytes become frames in `framing`, frames become messages in `messages`; this module owns what
happens between messages: matching replies, running handlers, deadlines and a clean close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec

from .deadlines import Deadlines
from .eager import EagerStarter
from .errors import (
    CallTimeoutError,
    ConnectionClosedError,
    ErrorCode,
    FrameError,
    ProtocolError,
    RemoteError,
)
from .framing import (
    DEFAULT_MAX_FRAME_BYTES,
    READ_CHUNK_BYTES,
    Buffer,
    FrameParser,
    FrameReader,
    FrameWriter,
)
from .messages import (
    CANCEL_METHOD,
    DECODE_ERRORS,
    MAX_MSGID,
    ErrorObject,
    LazyRequest,
    Message,
    MessageCodec,
    Notification,
    Request,
    Response,
)
from .streams import FrameStreamReader

T = TypeVar("T")
Handler = Callable[[Any], Awaitable[Any]]
NotificationHandler = Callable[[Any], None]

DEFAULT_MAX_CONCURRENT_REQUESTS: Final = 256
# Calls being served hold at most this many bytes of request frames, unless a single call needs
# more: a peer pipelining large calls then has them read one or a few at a time, as they finish.
SERVING_BUDGET_BYTES: Final = 1024 * 1024
_CLOSE_TIMEOUT_S: Final = 2.0
# Decodes params for a method without a params type, and retries a typed decode (below).
_PLAIN_DECODER: Final = msgspec.msgpack.Decoder()

_log = logging.getLogger(__name__)


class _Route:
    __slots__ = ("decoder", "handler", "params_type")

    def __init__(self, handler: Handler, params_type: type[Any] | None) -> None:
        self.handler = handler
        self.params_type = params_type
        self.decoder: msgspec.msgpack.Decoder[Any] = (
            _PLAIN_DECODER if params_type is None else msgspec.msgpack.Decoder(params_type)
        )

    def decode_params(self, raw: msgspec.Raw) -> Any:
        """Return the handler's params from their msgpack; `_InvalidParams` if they do not fit.

        Decoding straight into the params type skips building (and then converting) plain dicts.
        Where that is stricter than `msgspec.convert` from plain values (bytes sent as base64
        text, for one), the params are converted the old way, so a peer sees the same answers.
        Raises FrameError for bytes that are not msgpack at all.
        """
        try:
            try:
                return self.decoder.decode(raw)
            except msgspec.ValidationError:
                if self.params_type is None:
                    raise
                plain = _PLAIN_DECODER.decode(raw)
            return msgspec.convert(plain, self.params_type)
        except msgspec.ValidationError as exc:
            return _InvalidParams(str(exc))
        except DECODE_ERRORS as exc:
            raise FrameError(f"malformed message: {exc}") from exc


class _InvalidParams:
    """Params that did not convert to the method's type: the call is answered `invalid_params`."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


# A message read while calls are at their limit, waiting with its size and, for a Request, the
# route it was decoded for (routes are looked up when a call arrives, not when it starts).
_Incoming = tuple[Message, int, _Route | None]


class Endpoint:
    """Serve and make msgpack-RPC calls over one stream pair.

    Call `start()` (or `await run()`) to begin reading. Many calls may be in flight in both
    directions; replies are matched by msgid in any order. A broken frame or a vanished peer closes
    the session: every pending call then fails with `ConnectionClosedError` carrying the reason.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str = "endpoint",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
        call_timeout_s: float | None = None,
        initial_msgid: int = 0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.call_timeout_s = call_timeout_s
        self._reader = reader
        self._frames = FrameReader(reader, max_frame_bytes)
        self._parser = FrameParser(self._on_frame, max_frame_bytes, on_several=self._cork)
        self._max_frame_bytes = max_frame_bytes
        self._writer = writer
        self._out = FrameWriter(writer, max_frame_bytes)
        self._codec = MessageCodec()
        self._log = logger or _log
        self._routes: dict[str, _Route] = {}
        self._notification_routes: dict[str, NotificationHandler] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}
        self._cancel_requested: set[int] = set()
        # Backpressure: at most this many incoming calls run at once. A message that arrives while
        # none is free waits in the backlog, with everything after it, and reading stops.
        self._free_slots = max_concurrent_requests
        self._serving_bytes = 0
        self._backlog: deque[_Incoming] = deque()
        self._unblocked = asyncio.Event()
        self._broken: FrameError | None = None
        self._next_msgid = initial_msgid & MAX_MSGID
        self._reader_task: asyncio.Task[None] | None = None
        # asyncio.get_running_loop() costs a getpid() syscall on CPython 3.11: look it up once.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starter: EagerStarter | None = None
        self._closed = asyncio.Event()
        self._close_reason: str | None = None
        self._shutting_down = False
        self._deadlines = Deadlines(self._expire)

    # -- registration -------------------------------------------------------------------------

    def register(
        self, method: str, handler: Handler, *, params_type: type[Any] | None = None
    ) -> None:
        """Serve `method` with `handler`; with `params_type`, params are converted to it first.

        A conversion failure answers `invalid_params` without calling the handler. A handler
        raising `RemoteError` answers with its code; any other exception answers `internal`
        (its traceback stays in the local log).
        """
        self._routes[method] = _Route(handler, params_type)

    def register_notification(self, method: str, handler: NotificationHandler) -> None:
        """Call `handler(params)` for each incoming notification named `method`."""
        self._notification_routes[method] = handler

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame sent or accepted (the worker adopts the limit `initialize` names)."""
        return self._max_frame_bytes

    @max_frame_bytes.setter
    def max_frame_bytes(self, value: int) -> None:
        self._max_frame_bytes = value
        self._out.max_frame_bytes = value
        self._frames.max_frame_bytes = value
        self._parser.max_frame_bytes = value

    @property
    def methods(self) -> list[str]:
        """The names of the methods this endpoint serves."""
        return sorted(self._routes)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin reading in a task owned by this endpoint (closed by `aclose`)."""
        if self._reader_task is None:
            self._reader_task = self._running_loop().create_task(
                self.run(), name=f"{self.name}-reader"
            )

    @property
    def is_closed(self) -> bool:
        """Whether the session has ended (or is ending); no call can be made on it any more."""
        return self._close_reason is not None

    @property
    def close_reason(self) -> str | None:
        """Why the session ended (None while it is open)."""
        return self._close_reason

    async def wait_closed(self) -> None:
        """Wait until the session has ended, for any reason."""
        await self._closed.wait()

    async def run(self) -> None:
        """Read and dispatch messages until the peer closes the stream or breaks the protocol.

        Never raises for the peer's faults: they close the session with a reason instead.
        """
        reason = "peer closed the stream"
        try:
            if isinstance(self._reader, FrameStreamReader):
                await self._run_push(self._reader)
            else:
                await self._run_pull()
        except FrameError as exc:
            reason = f"protocol error: {exc}"
            self._log.warning("%s: closing session: %s", self.name, reason)
        except (ConnectionError, OSError) as exc:
            reason = f"stream error: {exc}"
        finally:
            await self._shutdown(reason)

    async def _run_pull(self) -> None:
        while (frame := await self._frames.read_frame()) is not None:
            self._on_frame(frame)
            if self._backlog:  # at the limit: read nothing more until a call finishes
                self._unblocked.clear()
                await self._unblocked.wait()
            if self._broken is not None:
                raise self._broken

    async def _run_push(self, reader: FrameStreamReader) -> None:
        # Frames are parsed and dispatched in the transport's callback; this task only waits for
        # the end of the stream (or for `_break`, which makes the read raise).
        buffered = reader.set_sink(self._feed)
        try:
            if buffered:
                self._feed(buffered)
            while await reader.read(READ_CHUNK_BYTES):
                pass  # unreachable while the sink is installed: read() returns only at EOF
        finally:
            reader.set_sink(None)
        if self._broken is not None:
            raise self._broken
        if self._parser.is_inside_frame:
            raise FrameError("stream ended inside a frame")

    def _feed(self, chunk: bytes) -> None:
        try:
            self._parser.feed(chunk)
        except FrameError as exc:
            self._break(exc)

    def _cork(self) -> None:
        # A read with more than one frame: the calls it starts, and the callers it wakes, write in
        # writes of a few frames instead of one write (and one wake-up of the peer) per frame. A
        # few, not all: with one write per read the two processes would take turns instead of
        # working at once. The answer to a lone frame is written at once.
        self._out.cork(self._loop or self._running_loop())

    def _break(self, error: FrameError) -> None:
        """Stop reading because the peer broke the protocol; `run` then closes the session."""
        if self._broken is not None:
            return
        self._broken = error
        self._backlog.clear()
        self._unblocked.set()
        if isinstance(self._reader, FrameStreamReader):
            self._reader.set_sink(None)
            self._reader.set_exception(error)

    async def aclose(self, reason: str = "closed by this side") -> None:
        """End the session: fail pending calls, cancel handlers, close the writer. Idempotent."""
        if self._close_reason is None:
            self._close_reason = reason
        current = asyncio.current_task()
        if self._reader_task is not None and self._reader_task is not current:
            if not self._shutting_down:
                # Not once it is shutting down: cancelling it inside `writer.wait_closed()` would
                # cancel the protocol's shared close future, and our own wait would then raise.
                self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        await self._shutdown(reason)

    async def _shutdown(self, reason: str) -> None:
        self._shutting_down = True
        if self._close_reason is None:
            self._close_reason = reason
        error = ConnectionClosedError(self._close_reason)
        self._deadlines.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        tasks = list(self._serving.values())
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        if self._starter is not None:
            tasks += self._starter.close()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._out.flush()
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()
        self._closed.set()

    # -- outgoing -----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout_s: float | None = None,
        result_type: type[T] | None = None,
    ) -> Any:
        """Call `method` on the peer and return its result (converted to `result_type` if given).

        Raises `RemoteError` when the peer answers with an error, `CallTimeoutError` when the
        deadline (`timeout_s`, else the endpoint's `call_timeout_s`) passes, and
        `ConnectionClosedError` when the session ends first. On timeout or cancellation the peer
        is sent `$/cancel` for this msgid.
        """
        if self._close_reason is not None:
            raise ConnectionClosedError(self._close_reason)
        msgid = self._next_msgid
        if msgid in self._pending:  # wrapped around onto a call still in flight
            msgid = self._allocate_msgid()
        else:
            self._next_msgid = (msgid + 1) & MAX_MSGID
        loop = self._loop or self._running_loop()
        if self._pending:
            # Other calls are in flight: calls started by the same loop iteration (a burst of
            # webhooks, say) go out in one write, and wake the peer once. A lone call is
            # written at once.
            self._out.cork(loop)
        # Written first, then registered: no answer is read before this coroutine next yields,
        # and the round trip's critical path loses the bookkeeping.
        must_drain = self._send_now(Request(msgid, method, params))
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[msgid] = future
        deadline_s = self.call_timeout_s if timeout_s is None else timeout_s
        try:
            if must_drain:
                await self._drain()
            if deadline_s is not None:
                self._deadlines.add(msgid, loop.time() + deadline_s, (method, deadline_s))
            try:
                result = await future  # fails with CallTimeoutError at the deadline
            except (CallTimeoutError, asyncio.CancelledError):
                self._send_cancel(msgid)
                raise
        finally:
            self._pending.pop(msgid, None)
            self._deadlines.discard(msgid)
        if isinstance(result, RemoteError):
            result.method = method
            raise result
        if result_type is None:
            return result
        try:
            return msgspec.convert(result, result_type)
        except msgspec.ValidationError as exc:
            raise RemoteError(
                ErrorCode.INTERNAL, f"peer returned an invalid result: {exc}", method=method
            ) from exc

    async def notify(self, method: str, params: Any = None) -> None:
        """Send a one-way notification; raise ConnectionClosedError if the session has ended."""
        if self._close_reason is not None:
            raise ConnectionClosedError(self._close_reason)
        await self._send(Notification(method, params))

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _expire(self, msgid: int, call: tuple[str, float]) -> None:
        future = self._pending.get(msgid)
        if future is not None and not future.done():
            future.set_exception(CallTimeoutError(*call))

    def _allocate_msgid(self) -> int:
        msgid = self._next_msgid
        self._next_msgid = (msgid + 1) & MAX_MSGID
        if msgid not in self._pending:
            return msgid
        for _ in range(len(self._pending)):
            msgid = self._next_msgid
            self._next_msgid = (msgid + 1) & MAX_MSGID
            if msgid not in self._pending:
                return msgid
        raise ProtocolError("no free msgid")  # unreachable: more ids than pending calls

    def _send_cancel(self, msgid: int) -> None:
        # Best effort and without awaiting: this runs while a caller is being cancelled.
        if not self.is_closed and not self._writer.is_closing():
            with contextlib.suppress(FrameError, ConnectionError, RuntimeError):
                self._write(Notification(CANCEL_METHOD, [msgid]))

    def _write(self, message: Message) -> None:
        self._out.write(self._codec.encode(message))

    async def _send(self, message: Message) -> None:
        if self._send_now(message):
            await self._drain()

    def _send_now(self, message: Message) -> bool:
        """Write `message`; return whether the caller must then await `_drain()`."""
        try:
            return self._out.write(self._codec.encode(message))  # `_write`, one call less
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionClosedError(f"cannot write to peer: {exc}") from exc

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionClosedError(f"cannot write to peer: {exc}") from exc

    # -- incoming -----------------------------------------------------------------------------

    def _on_frame(self, frame: Buffer) -> None:
        message = self._codec.decode_lazy(frame)
        size = len(frame)
        if isinstance(message, LazyRequest):
            # Params are decoded now, while `frame` is valid, with the type their method expects.
            route = self._routes.get(message.method)
            params = None if route is None else route.decode_params(message.params)
            request = Request(message.msgid, message.method, params)
            if self._backlog or not self._admits(size):
                self._hold((request, size, route))
            else:
                self._start(request, size, route)
        elif self._backlog:
            self._hold((message, size, None))
        elif type(message) is Response:  # the commonest message, without `_dispatch`'s tests
            self._resolve(message)
        else:
            self._dispatch(message, size, None)

    def _hold(self, incoming: _Incoming) -> None:
        self._backlog.append(incoming)
        if len(self._backlog) == 1 and isinstance(self._reader, FrameStreamReader):
            self._reader.pause_reading()

    def _admits(self, size: int) -> bool:
        # A call needs a slot, and room in the byte budget unless nothing else is being served.
        if not self._free_slots:
            return False
        return not self._serving_bytes or self._serving_bytes + size <= SERVING_BUDGET_BYTES

    def _drain_backlog(self) -> None:
        try:
            while self._backlog:
                message, size, route = self._backlog[0]
                if type(message) is Request and not self._admits(size):
                    return
                self._backlog.popleft()
                self._dispatch(message, size, route)
        except FrameError as exc:
            self._break(exc)
            return
        self._unblocked.set()
        if isinstance(self._reader, FrameStreamReader):
            self._reader.resume_reading()

    def _dispatch(self, message: Message, size: int, route: _Route | None) -> None:
        if isinstance(message, Response):
            self._resolve(message)
        elif isinstance(message, Request):
            self._start(message, size, route)
        elif message.method == CANCEL_METHOD:
            self._cancel_incoming(message.params)
        else:
            handler = self._notification_routes.get(message.method)
            if handler is None:
                self._log.debug("%s: ignoring notification %r", self.name, message.method)
                return
            try:
                handler(message.params)
            except Exception:
                self._log.exception("%s: notification handler %r failed", self.name, message.method)

    def _start(self, request: Request, size: int, route: _Route | None) -> None:
        if request.msgid in self._serving:
            raise FrameError(f"duplicate msgid {request.msgid} for a call still in flight")
        self._free_slots -= 1
        self._serving_bytes += size
        # Most handlers answer without waiting: they run, and answer, right here (protocol.eager).
        starter = self._starter or self._eager_starter()
        task = starter.start(self._serve(request, size, route))
        if task is not None and not task.done():
            self._serving[request.msgid] = task

    def _eager_starter(self) -> EagerStarter:
        self._starter = EagerStarter(self._running_loop(), self.name)
        return self._starter

    def _resolve(self, response: Response) -> None:
        future = self._pending.get(response.msgid)
        if future is None or future.done():
            return  # a late reply to a call that timed out or was cancelled
        if response.error is not None:
            err = response.error
            future.set_result(RemoteError(err.code, err.message, err.data))
        else:
            future.set_result(response.result)

    def _cancel_incoming(self, params: Any) -> None:
        msgid = params[0] if isinstance(params, list) and params else params
        if not isinstance(msgid, int):
            return
        task = self._serving.get(msgid)
        if task is not None and not task.done():
            self._cancel_requested.add(msgid)
            # Cancel from the ready queue, not here: the `$/cancel` may share a read with its
            # request, and a task cancelled before its first step never enters `_serve`'s `try`.
            # Its first step was queued when it was created, so it runs first.
            self._running_loop().call_soon(self._cancel_serving, msgid, task)

    def _cancel_serving(self, msgid: int, task: asyncio.Task[None]) -> None:
        # Only if it still serves that call: a pooled task (protocol.eager) may have finished it
        # and gone on to another since the `$/cancel` was read.
        if self._serving.get(msgid) is task:
            task.cancel()

    async def _serve(self, request: Request, size: int, route: _Route | None) -> None:
        # The slot and the bytes are held until the reply has been written and drained, so a peer
        # that does not read our replies stops getting its calls read. Clean-up is a `finally`,
        # not a done-callback, which would cost every call one more loop iteration.
        try:
            try:
                if route is None:
                    message = f"no method {request.method!r}"
                    response = _error(request, ErrorCode.METHOD_NOT_FOUND, message)
                elif type(request.params) is _InvalidParams:
                    response = _error(request, ErrorCode.INVALID_PARAMS, request.params.message)
                else:
                    response = Response(request.msgid, None, await route.handler(request.params))
            except asyncio.CancelledError:
                if request.msgid in self._cancel_requested and not self.is_closed:
                    message = f"call to {request.method!r} cancelled"
                    with contextlib.suppress(FrameError, ConnectionError, RuntimeError):
                        self._write(_error(request, ErrorCode.CANCELLED, message))
                raise
            except Exception as exc:
                response = self._handler_failed(request, exc)
            try:
                if self._out.write(self._encode_reply(request, response)):  # must drain
                    await self._writer.drain()
            except (ConnectionError, RuntimeError):
                pass  # the reader sees the stream end and closes the session
        finally:
            if self._serving:  # empty while every call is answered at once (protocol.eager)
                self._serving.pop(request.msgid, None)
            if self._cancel_requested:
                self._cancel_requested.discard(request.msgid)
            self._free_slots += 1
            self._serving_bytes -= size
            if self._backlog and not self.is_closed:
                self._drain_backlog()

    def _handler_failed(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, RemoteError):
            return Response(request.msgid, ErrorObject(exc.code, exc.message, exc.data), None)
        if isinstance(exc, TimeoutError):
            return _error(request, ErrorCode.TIMEOUT, f"{request.method!r} timed out")
        self._log.exception("%s: handler for %r failed", self.name, request.method, exc_info=exc)
        return _error(request, ErrorCode.INTERNAL, f"internal error in {request.method!r}")

    def _encode_reply(self, request: Request, response: Response) -> bytes:
        """Encode once; a result that cannot be encoded or is too large becomes an error reply."""
        try:
            body = self._codec.encode(response)
        except FrameError as exc:
            error = _error(request, ErrorCode.INTERNAL, f"result cannot be encoded: {exc}")
            return self._codec.encode(error)
        if len(body) > self._max_frame_bytes:
            error = _error(request, ErrorCode.TOO_LARGE, "result exceeds the frame limit")
            return self._codec.encode(error)
        return body


def _error(request: Request, code: ErrorCode, message: str) -> Response:
    return Response(request.msgid, ErrorObject(code, message), None)
