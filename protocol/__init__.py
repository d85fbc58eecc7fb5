"""The contract both sides share: framing, messages, endpoint, handshake, manifest, categories.

Imports neither aiohttp nor sandbox; it runs over any asyncio StreamReader/StreamWriter pair.
"""

from .allocator import tune_allocator
from .endpoint import Endpoint
from .errors import (
    CallTimeoutError,
    ConnectionClosedError,
    ErrorCode,
    FrameError,
    ManifestError,
    ProtocolError,
    RemoteError,
    VersionMismatchError,
)
from .framing import DEFAULT_MAX_FRAME_BYTES, HEADER, FrameParser, FrameReader, encode_frame
from .handshake import (
    INITIALIZE_METHOD,
    PING_METHOD,
    PROTOCOL_VERSION,
    SHUTDOWN_METHOD,
    InitializeParams,
    InitializeResult,
    Limits,
    check_version,
)
from .host_functions import HTTP_REQUEST_METHOD, HttpRequest, HttpResponse
from .manifest import Manifest, config_schema, load_manifest, parse_manifest
from .messages import CANCEL_METHOD, ErrorObject, MessageCodec, Notification, Request, Response
from .streams import FrameStreamReader, enlarge_pipe, loop_factory, open_pipe_streams

__all__ = [
    "CANCEL_METHOD",
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER",
    "HTTP_REQUEST_METHOD",
    "INITIALIZE_METHOD",
    "PING_METHOD",
    "PROTOCOL_VERSION",
    "SHUTDOWN_METHOD",
    "CallTimeoutError",
    "ConnectionClosedError",
    "Endpoint",
    "ErrorCode",
    "ErrorObject",
    "FrameError",
    "FrameParser",
    "FrameReader",
    "FrameStreamReader",
    "HttpRequest",
    "HttpResponse",
    "InitializeParams",
    "InitializeResult",
    "Limits",
    "Manifest",
    "ManifestError",
    "MessageCodec",
    "Notification",
    "ProtocolError",
    "RemoteError",
    "Request",
    "Response",
    "VersionMismatchError",
    "check_version",
    "config_schema",
    "encode_frame",
    "enlarge_pipe",
    "load_manifest",
    "loop_factory",
    "open_pipe_streams",
    "parse_manifest",
    "tune_allocator",
]
