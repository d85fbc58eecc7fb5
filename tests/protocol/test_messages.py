from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ErrorObject, FrameError, MessageCodec, Notification, Request, Response
from protocol.messages import LazyRequest

codec = MessageCodec()


def test_messages_use_the_msgpack_rpc_array_layout() -> None:
    raw = msgspec.msgpack.decode
    assert raw(codec.encode(Request(7, "a.b", {"x": 1}))) == [0, 7, "a.b", {"x": 1}]
    assert raw(codec.encode(Response(7, None, [1]))) == [1, 7, None, [1]]
    error = ErrorObject("timeout", "too slow")
    assert raw(codec.encode(Response(7, error, None))) == [
        1,
        7,
        {"code": "timeout", "message": "too slow"},
        None,
    ]
    assert raw(codec.encode(Notification("$/cancel", [7]))) == [2, "$/cancel", [7]]


@pytest.mark.parametrize(
    "body",
    [
        msgspec.msgpack.encode([3, 1, "m", None]),  # unknown type tag
        msgspec.msgpack.encode([0, 1, "m"]),  # too short
        msgspec.msgpack.encode([0, "1", "m", None]),  # msgid not an int
        msgspec.msgpack.encode([0, 2**32, "m", None]),  # msgid out of range
        msgspec.msgpack.encode([0, -1, "m", None]),
        msgspec.msgpack.encode({"type": 0}),  # not an array
        msgspec.msgpack.encode([1, 1, {"message": "no code"}, None]),
        b"\x94\x00\x01\xa1m\x81\xa1s\xa2\xff\xfe",  # a string that is not UTF-8
        b"\xc1",  # never-used msgpack byte
        b"",
    ],
)
def test_decode_rejects_malformed_messages(body: bytes) -> None:
    with pytest.raises(FrameError):
        codec.decode(body)


def test_decode_lazy_leaves_request_params_as_msgpack() -> None:
    message = codec.decode_lazy(codec.encode(Request(7, "a.b", {"x": b"\x00"})))
    assert isinstance(message, LazyRequest)
    assert (message.msgid, message.method) == (7, "a.b")
    assert msgspec.msgpack.decode(message.params) == {"x": b"\x00"}
    response = Response(7, None, [1])
    assert codec.decode_lazy(codec.encode(response)) == response


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
msgids = st.integers(0, 2**32 - 1)
messages = st.one_of(
    st.builds(Request, msgids, st.text(), json_values),
    st.builds(Response, msgids, st.none(), json_values),
    st.builds(
        Response, msgids, st.builds(ErrorObject, st.text(), st.text(), json_values), st.none()
    ),
    st.builds(Notification, st.text(), json_values),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_every_message_round_trips(message: Request | Response | Notification) -> None:
    assert codec.decode(codec.encode(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_frame_error(body: bytes) -> None:
    try:
        codec.decode(body)
    except FrameError:
        pass
