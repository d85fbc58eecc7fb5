"""Errors raised by the protocol package, and the stable error codes that cross the wire.

One root, `ProtocolError`; subclasses are chosen by what the caller does next. Foreign exceptions
(msgspec, OSError) are translated at this package's edge, so callers never see them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable, machine-readable codes carried in a Response's error object."""

    METHOD_NOT_FOUND = "method_not_found"
    INVALID_PARAMS = "invalid_params"
    PLUGIN_ERROR = "plugin_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    EGRESS_DENIED = "egress_denied"
    VERSION_MISMATCH = "version_mismatch"


class ProtocolError(Exception):
    """Root of every error raised by the protocol package."""


class FrameError(ProtocolError):
    """The byte stream is corrupt or a limit was broken; the session cannot be used again."""


class ConnectionClosedError(ProtocolError):
    """The peer went away (or we closed the session) while a call was pending."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallTimeoutError(ProtocolError, TimeoutError):
    """A call's deadline passed before the peer answered; the peer was sent `$/cancel`."""

    def __init__(self, method: str, timeout_s: float) -> None:
        super().__init__(f"call to {method!r} timed out after {timeout_s:g} s")
        self.method = method
        self.timeout_s = timeout_s


class VersionMismatchError(ProtocolError):
    """The two sides of a handshake speak different protocol versions."""

    def __init__(self, ours: int, theirs: int) -> None:
        super().__init__(f"protocol version mismatch: host speaks {ours}, worker speaks {theirs}")
        self.ours = ours
        self.theirs = theirs


class ManifestError(ProtocolError):
    """A plugin.toml is invalid; `problems` lists each problem with its path (`$.id`)."""

    def __init__(self, problems: list[str], source: str = "plugin.toml") -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems
        self.source = source


class RemoteError(ProtocolError):
    """The peer answered with an error (or a handler raised one to send); see `code`.

    Raise it in a handler to send a specific code; it arrives at the caller as a `RemoteError` with
    the same `code`, `message` and `data`. Tracebacks never cross the wire.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        data: Any = None,
        *,
        method: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.data = data
        self.method = method
