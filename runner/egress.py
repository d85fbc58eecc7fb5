"""The egress broker: performs a worker's `http.request` host call if policy allows it.

It checks the URL against the manifest's `network.outbound:` grants and the operator's lists,
resolves the host and refuses non-public addresses, then connects by IP to an address it
checked (TLS still verifies the real host name), following redirects itself so that every hop
is checked the same way. Policy lives in `egress_policy`, settings in `egress_settings`, audit
events in `egress_audit`; wiring it to the worker's host functions is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from protocol import HttpRequest, HttpResponse
from protocol.manifest import HTTP_METHODS, Manifest

from .egress_audit import CANCELLED, EgressAudit, Trail
from .egress_errors import EgressDeniedError, EgressError, EgressFailedError, EgressReason
from .egress_policy import (
    DEFAULT_PORTS,
    HostPattern,
    IPAddress,
    grants_of,
    is_allowed_private,
    is_covered,
    is_granted,
    non_public_kind,
    normalize_host,
)
from .egress_resolve import Resolver, SystemResolver
from .egress_settings import EgressSettings, HostOverride

_log = logging.getLogger(__name__)

_CHUNK: Final = 64 * 1024
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Request headers the broker owns (framing, routing) or that make no sense without a proxy.
_DROPPED_REQUEST: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
    | {"te", "trailer", "expect"}
)
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)
_CREDENTIALS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})
ActivationKey = tuple[str, str]
Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Target:
    """One hop's destination: the URL as the plugin (or a redirect) wrote it, checked."""

    url: URL
    host: str
    port: int
    override: HostOverride | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.url.scheme, self.host, self.port)

    @property
    def scheme(self) -> str:
        """The scheme actually spoken on the wire (an override's, else the URL's)."""
        return self.override.scheme if self.override else self.url.scheme

    def connect_url(self, address: IPAddress) -> URL:
        """Return the URL aimed at `address` itself, so no further resolution happens."""
        port = self.override.port if self.override else self.port
        return (
            self.url.with_scheme(self.scheme)
            .with_host(str(address))
            .with_port(port)
            .with_fragment(None)
        )

    @property
    def host_header(self) -> str:
        if self.port != DEFAULT_PORTS[self.url.scheme]:
            return _authority(self.host, self.port)
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def server_hostname(self) -> str | None:
        """The name TLS sends (SNI) and verifies the certificate against, when TLS is spoken."""
        return self.host if self.scheme == "https" else None


class EgressBroker:
    """Perform outbound HTTP for plugin activations under the operator's egress policy.

    One aiohttp session (no proxies from the environment, no cookie jar, bounded connector)
    serves every activation; call `close()` once at shutdown.
    """

    def __init__(
        self,
        settings: EgressSettings,
        audit: EgressAudit | None = None,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`resolver` defaults to the system's; `ssl_context` to the default verifying context
        (tests pass one that trusts their own CA)."""
        self.settings = settings
        self._audit = audit
        self._resolver: Resolver = resolver or SystemResolver()
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        self._slots = _Slots(settings.concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        for host, override in settings.host_overrides.items():
            _log.warning(
                "egress host override in force (tests only): requests for %s go to %s",
                host,
                override,
            )

    async def close(self) -> None:
        """Close the session and its pooled connections; later requests fail `broker_closed`."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def request(
        self,
        *,
        tenant_id: str,
        plugin_id: str,
        permissions: Sequence[str] | Manifest,
        request: HttpRequest,
    ) -> HttpResponse:
        """Perform `request` for the activation if its permissions and the policy allow it.

        `permissions` is the manifest (or its permission strings). The time limit is the
        smaller of `request.timeout_s` and the operator's `timeout_s`, waiting for a
        concurrency slot included. Raises EgressDeniedError or EgressFailedError (see
        `to_remote_error`). Every hop is handed to the audit callback, also on cancellation.
        """
        if isinstance(permissions, Manifest):
            permissions = permissions.permissions
        grants = grants_of(permissions)
        loop = asyncio.get_running_loop()
        trail = Trail(tenant_id, plugin_id, request.method.upper()[:16], loop.time)
        try:
            response = await self._limited(trail, grants, request, (tenant_id, plugin_id))
        except EgressError as exc:
            trail.fail(exc)
            await trail.emit(self._audit)
            raise
        except BaseException as exc:  # cancelled, or our own bug: still audited, then re-raised
            trail.abort(CANCELLED if isinstance(exc, asyncio.CancelledError) else "internal")
            await trail.emit(self._audit)
            raise
        await trail.emit(self._audit)
        return response

    async def _limited(
        self, trail: Trail, grants: Sequence[HostPattern], request: HttpRequest, key: ActivationKey
    ) -> HttpResponse:
        # Everything decidable without the network is decided before waiting for a slot.
        if not request.timeout_s > 0:  # NaN included
            raise EgressDeniedError(EgressReason.INVALID_REQUEST, "timeout_s must be positive")
        method = request.method.upper()
        if method not in HTTP_METHODS:
            raise EgressDeniedError(EgressReason.INVALID_REQUEST, "the method is not allowed")
        if len(request.body) > self.settings.max_request_bytes:
            raise EgressDeniedError(
                EgressReason.REQUEST_TOO_LARGE,
                f"the body exceeds {self.settings.max_request_bytes} bytes",
            )
        headers = _outgoing_headers(request.headers)
        target = self._check_target(trail, grants, _parse_url(request.url), method, request.body)
        budget_s = min(request.timeout_s, self.settings.timeout_s)
        deadline = asyncio.get_running_loop().time() + budget_s
        async with self._slots.hold(key, min(self.settings.concurrency_wait_s, budget_s)):
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._follow(trail, grants, target, method, headers, request.body)
            except TimeoutError as exc:
                raise EgressFailedError(
                    EgressReason.TIMEOUT, f"no complete answer within {budget_s:g} s"
                ) from exc

    async def _follow(
        self,
        trail: Trail,
        grants: Sequence[HostPattern],
        target: _Target,
        method: str,
        headers: Headers,
        body: bytes,
    ) -> HttpResponse:
        redirects = 0
        while True:
            addresses = await self._addresses(target)
            answer = await self._exchange(trail, target, addresses, method, headers, body)
            if isinstance(answer, HttpResponse):
                return answer
            status, location = answer
            try:
                url = target.url.join(URL(location)).with_fragment(None)
            except ValueError as exc:
                raise EgressFailedError(
                    EgressReason.UPSTREAM_ERROR, "a redirect's Location is not a URL"
                ) from exc
            redirects += 1
            method, body, headers = _redirected(status, method, body, headers)
            if redirects > self.settings.max_redirects:
                trail.begin(normalize_host(url.raw_host or ""), url.port, method, len(body))
                raise EgressDeniedError(
                    EgressReason.TOO_MANY_REDIRECTS,
                    f"more than {self.settings.max_redirects} redirects",
                )
            previous, target = target, self._check_target(trail, grants, url, method, body)
            if target.origin != previous.origin:
                headers = [(k, v) for k, v in headers if k.lower() not in _CREDENTIALS]

    def _check_target(
        self, trail: Trail, grants: Sequence[HostPattern], url: URL, method: str, body: bytes
    ) -> _Target:
        """Start the hop to `url` in `trail` and return it checked; raise EgressDeniedError."""
        if url.scheme not in DEFAULT_PORTS or not url.raw_host or url.port is None:
            raise EgressDeniedError(
                EgressReason.SCHEME_NOT_ALLOWED, "only http(s) URLs with a host are allowed"
            )
        host, port = normalize_host(url.raw_host), url.port
        trail.begin(host, port, method, len(body))
        if url.user is not None or url.password is not None:
            raise EgressDeniedError(EgressReason.INVALID_REQUEST, "URLs must not hold credentials")
        settings = self.settings
        if not is_granted(grants, host, port, DEFAULT_PORTS[url.scheme]):
            raise EgressDeniedError(
                EgressReason.HOST_NOT_PERMITTED,
                f"{_authority(host, port)} is not granted by the plugin's network.outbound "
                "permissions",
            )
        if is_covered(settings.deny_hosts, host, port) or (
            settings.allow_hosts is not None and not is_covered(settings.allow_hosts, host, port)
        ):
            raise EgressDeniedError(
                EgressReason.OPERATOR_DENIED, f"{_authority(host, port)} is refused by the operator"
            )
        if url.scheme == "http" and not is_covered(settings.http_hosts, host, port):
            raise EgressDeniedError(
                EgressReason.SCHEME_NOT_ALLOWED, f"plain http to {host} is not allowed; use https"
            )
        return _Target(url, host, port, settings.host_overrides.get(host))

    async def _addresses(self, target: _Target) -> list[IPAddress]:
        if target.override is not None:
            addresses = [target.override.address]
        elif (literal := _ip_literal(target.host)) is not None:
            addresses = [literal]
        else:
            addresses = await self._resolver.resolve(target.host, target.port)
        for address in addresses:  # one bad answer refuses the name: no mixing public and not
            kind = non_public_kind(address)
            if kind is not None and not is_allowed_private(
                address, self.settings.allowed_private_networks
            ):
                raise EgressDeniedError(
                    EgressReason.NON_PUBLIC_ADDRESS,
                    f"{target.host} resolves to a non-public ({kind}) address",
                    address=str(address),
                )
        return addresses

    async def _exchange(
        self,
        trail: Trail,
        target: _Target,
        addresses: list[IPAddress],
        method: str,
        headers: Headers,
        body: bytes,
    ) -> HttpResponse | tuple[int, str]:
        """Send one hop to the first address that accepts a connection.

        Return the final answer, or a redirect's (status, Location).
        """
        session = self._open_session()
        sent = [*headers, ("Host", target.host_header)]
        for index, address in enumerate(addresses):
            trail.connecting(str(address))
            try:
                async with session.request(
                    method,
                    target.connect_url(address),
                    headers=sent,
                    data=body or None,
                    allow_redirects=False,
                    ssl=self._ssl,
                    server_hostname=target.server_hostname,
                ) as response:
                    return await self._answer(trail, method, response)
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
                raise EgressFailedError(
                    EgressReason.TLS_FAILED, f"TLS with {target.host} failed"
                ) from exc
            except aiohttp.ClientConnectorError as exc:
                if index + 1 < len(addresses):
                    continue  # the next checked address may accept
                raise EgressFailedError(
                    EgressReason.CONNECT_FAILED, f"cannot connect to {target.host}"
                ) from exc
            except aiohttp.ClientError as exc:
                raise EgressFailedError(
                    EgressReason.UPSTREAM_ERROR, f"{target.host} broke the exchange"
                ) from exc
        raise EgressFailedError(EgressReason.CONNECT_FAILED, f"no address for {target.host}")

    async def _answer(
        self, trail: Trail, method: str, response: aiohttp.ClientResponse
    ) -> HttpResponse | tuple[int, str]:
        location = response.headers.get("Location")
        if response.status in _REDIRECTS and location:
            trail.finish(response.status, 0)
            return (response.status, location)
        cap = self.settings.max_response_bytes
        declared = None if method == "HEAD" else response.content_length
        if declared is not None and declared > cap:
            raise EgressDeniedError(
                EgressReason.RESPONSE_TOO_LARGE, f"the answer exceeds {cap} bytes"
            )
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            if len(body) + len(chunk) > cap:
                raise EgressDeniedError(
                    EgressReason.RESPONSE_TOO_LARGE, f"the answer exceeds {cap} bytes"
                )
            body += chunk
        trail.finish(response.status, len(body))
        return HttpResponse(
            status=response.status, headers=_incoming_headers(response), body=bytes(body)
        )

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise EgressFailedError(EgressReason.BROKER_CLOSED, "the host is shutting down")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.settings.max_connections,
                use_dns_cache=False,
                resolver=_NoResolver(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # never HTTP(S)_PROXY, NO_PROXY or .netrc
                cookie_jar=aiohttp.DummyCookieJar(),  # shared by all tenants: keep nothing
                auto_decompress=False,  # the plugin gets the bytes as sent, capped as sent
                timeout=aiohttp.ClientTimeout(total=None),  # the broker's deadline rules
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session


class _NoResolver(aiohttp.abc.AbstractResolver):
    """The connector's resolver: refuses every name, since the broker connects by IP only."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        raise OSError(f"egress connects by address only, not to {host!r}")

    async def close(self) -> None:
        return None


class _Slots:
    """A semaphore per activation, dropped once no request holds or awaits it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[ActivationKey, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: ActivationKey, wait_s: float) -> AsyncIterator[None]:
        """Hold one of the activation's slots; wait at most `wait_s`, then deny."""
        semaphore, users = self._entries.setdefault(key, (asyncio.Semaphore(self._size), [0]))
        users[0] += 1
        try:
            try:
                async with asyncio.timeout(wait_s if semaphore.locked() else None):
                    await semaphore.acquire()
            except TimeoutError as exc:
                raise EgressDeniedError(
                    EgressReason.CONCURRENCY_LIMIT,
                    f"{self._size} requests of this activation are already in flight",
                ) from exc
            try:
                yield
            finally:
                semaphore.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._entries[key]


def _parse_url(text: str) -> URL:
    try:
        url = URL(text)
        url.port  # noqa: B018  (an invalid port only shows when read)
    except (ValueError, TypeError) as exc:
        raise EgressDeniedError(EgressReason.INVALID_REQUEST, "the URL cannot be parsed") from exc
    if not url.is_absolute():
        raise EgressDeniedError(EgressReason.INVALID_REQUEST, "the URL must be absolute")
    return url.with_fragment(None)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _outgoing_headers(pairs: Sequence[tuple[str, str]]) -> Headers:
    headers: Headers = []
    for name, value in pairs:
        if not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            raise EgressDeniedError(EgressReason.INVALID_REQUEST, "a request header is malformed")
        lowered = name.lower()
        if lowered in _DROPPED_REQUEST or lowered.startswith("proxy-"):
            continue
        headers.append((name, value))
    return headers


def _redirected(
    status: int, method: str, body: bytes, headers: Headers
) -> tuple[str, bytes, Headers]:
    """Return the next hop's method, body and headers, as browsers and RFC 9110 do."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        kept = [(k, v) for k, v in headers if not k.lower().startswith("content-")]
        return "GET", b"", kept
    return method, body, headers


def _incoming_headers(response: aiohttp.ClientResponse) -> Headers:
    named = {
        token.strip().lower()
        for value in response.headers.getall("Connection", [])
        for token in value.split(",")
    }
    headers: Headers = []
    for raw_name, raw_value in response.raw_headers:
        name = raw_name.decode("latin-1")
        lowered = name.lower()
        if lowered in _HOP_BY_HOP or lowered in named or lowered.startswith("proxy-"):
            continue
        headers.append((name, raw_value.decode("latin-1")))
    return headers
