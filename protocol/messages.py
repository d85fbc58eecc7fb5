"""Wire messages: msgpack-RPC arrays as frozen msgspec structs, and the codec for them.

Request `[0, msgid, method, params]`, Response `[1, msgid, error, result]`, Notification
`[2, method, params]`. The codec turns frames into typed messages; ids and dispatch belong to
`endpoint`.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from .errors import FrameError
from .framing import Buffer

CANCEL_METHOD: Final = "$/cancel"
MAX_MSGID: Final = 2**32 - 1

# Checked by the decoder itself (no second pass over the message in Python).
MsgId = Annotated[int, msgspec.Meta(ge=0, le=MAX_MSGID)]


class ErrorObject(msgspec.Struct, frozen=True, omit_defaults=True):
    """The error member of a Response: a stable `code`, a human `message`, optional `data`."""

    code: str
    message: str
    data: Any = None


class Request(msgspec.Struct, array_like=True, frozen=True, tag=0):
    """A call that expects a Response with the same msgid."""

    msgid: MsgId
    method: str
    params: Any


class Response(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """The answer to a Request: exactly one of `error` and `result` is meaningful."""

    msgid: MsgId
    error: ErrorObject | None
    result: Any


class Notification(msgspec.Struct, array_like=True, frozen=True, tag=2):
    """A one-way message; no Response follows."""

    method: str
    params: Any


class LazyRequest(msgspec.Struct, array_like=True, frozen=True, tag=0):
    """A Request as received, its params still msgpack: the receiver decodes them with the type
    its method expects (straight into that struct, not through a dict first).

    `params` points into the frame it came from: decode it before the frame's buffer is reused.
    """

    msgid: MsgId
    method: str
    params: msgspec.Raw


Message = Request | Response | Notification
IncomingMessage = LazyRequest | Response | Notification

# What a msgpack decoder raises for a body that is not a valid message: DecodeError (including
# ValidationError), and UnicodeDecodeError for a string that is not UTF-8.
DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError)


class MessageCodec:
    """Encode messages to msgpack bodies and decode bodies to typed messages."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
        self._lazy_decoder: msgspec.msgpack.Decoder[IncomingMessage] = msgspec.msgpack.Decoder(
            IncomingMessage
        )

    def encode(self, message: Message) -> bytes:
        """Return the msgpack body of `message`; raise FrameError if it holds unencodable data."""
        try:
            return self._encoder.encode(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise FrameError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def decode(self, body: Buffer) -> Message:
        """Return the message in `body`; raise FrameError if it is not a valid message."""
        try:
            return self._decoder.decode(body)
        except DECODE_ERRORS as exc:
            raise FrameError(f"malformed message: {exc}") from exc

    def decode_lazy(self, body: Buffer) -> IncomingMessage:
        """Like `decode`, but a Request comes as a `LazyRequest`, its params not yet decoded.

        Raises FrameError if `body` is not a valid message; params are checked when decoded.
        """
        try:
            return self._lazy_decoder.decode(body)
        except DECODE_ERRORS as exc:
            raise FrameError(f"malformed message: {exc}") from exc
