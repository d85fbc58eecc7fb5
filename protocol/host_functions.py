"""Host functions: calls a worker makes to the host while it serves (the worker has no network).

Each is an ordinary Request from worker to host. The host answers `unavailable` for a function it
does not offer, and `egress_denied` when policy refuses an outbound request.
"""

from __future__ import annotations

from typing import Final

import msgspec

HTTP_REQUEST_METHOD: Final = "http.request"


class HttpRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An outbound HTTP request the host performs on the plugin's behalf, if policy allows it."""

    method: str
    url: str
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    body: bytes = b""
    timeout_s: float = 30.0


class HttpResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The provider's answer, with the body capped by the host's response-size limit."""

    status: int
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first header named `name` (case-insensitive), or `default`."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), default)
