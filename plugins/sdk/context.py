"""What a handler receives: its tenant, its own config subtree, a logger, and host functions.

A worker serves one (tenant, plugin) activation, so the context is the same for every call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from protocol import HTTP_REQUEST_METHOD, Endpoint, HttpRequest, HttpResponse


class HttpClient:
    """Outbound HTTP through the host, which enforces the manifest's `network.outbound` grants.

    Errors arrive as `protocol.RemoteError`: `egress_denied` (policy refused, see `.message`),
    `timeout`, or `unavailable` (the host offers no egress).
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        body: bytes = b"",
        timeout_s: float = 30.0,
    ) -> HttpResponse:
        """Ask the host to perform the request; return the provider's answer."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        request = HttpRequest(method=method, url=url, headers=pairs, body=body, timeout_s=timeout_s)
        result: HttpResponse = await self._endpoint.request(
            HTTP_REQUEST_METHOD, request, timeout_s=timeout_s + 5.0, result_type=HttpResponse
        )
        return result


class Context:
    """Per-activation context: `tenant_id`, `plugin_id`, read-only `config`, `log`, `http`."""

    def __init__(
        self, *, tenant_id: str, plugin_id: str, config: Mapping[str, Any], endpoint: Endpoint
    ) -> None:
        self.tenant_id = tenant_id
        self.plugin_id = plugin_id
        self.config: Mapping[str, Any] = MappingProxyType(dict(config))
        self.log = logging.getLogger(f"plugin.{plugin_id}")
        self.http = HttpClient(endpoint)
        self._endpoint = endpoint

    async def call_host(self, method: str, params: Any = None, *, timeout_s: float = 30.0) -> Any:
        """Call a host function by name; raise `protocol.RemoteError` on an error answer."""
        return await self._endpoint.request(method, params, timeout_s=timeout_s)
