"""The handshake: the host's `initialize` call and the worker's answer, and the version check.

The host calls `initialize` first and nothing else until it returns; the worker answers with what
it is and what it serves. What the worker does with the config is the SDK's business.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .errors import VersionMismatchError
from .framing import DEFAULT_MAX_FRAME_BYTES

PROTOCOL_VERSION: Final = 1
INITIALIZE_METHOD: Final = "initialize"
SHUTDOWN_METHOD: Final = "shutdown"
PING_METHOD: Final = "ping"
LOG_METHOD: Final = "$/log"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits the host imposes on the session; the worker honours them on its side too."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    call_timeout_s: float = 30.0
    max_concurrent_requests: int = 64


class InitializeParams(msgspec.Struct, frozen=True, kw_only=True):
    """What the host tells a new worker: who it serves and with which config subtree."""

    protocol_version: int
    tenant_id: str
    plugin_id: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    limits: Limits = msgspec.field(default_factory=Limits)


class InitializeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the worker answers: its version, identity and the methods it serves."""

    protocol_version: int
    plugin_id: str
    plugin_version: str
    categories: list[str]
    methods: list[str]


def check_version(theirs: int, ours: int = PROTOCOL_VERSION) -> None:
    """Raise VersionMismatchError, naming both versions, unless they are equal."""
    if theirs != ours:
        raise VersionMismatchError(ours, theirs)
