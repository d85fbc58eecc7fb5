"""The public URL a provider called (and signed), rebuilt behind a reverse proxy.

Behind a proxy, the URL corral sees is the proxy's upstream one. The operator either names the
public base URL, or lists the proxies whose forwarding headers are trusted; headers from any
other peer are ignored, so a client cannot choose the URL its signature is checked against.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from .errors import RunnerError
from .webhook_schemes import header_values

PUBLIC_BASE_URL_VARIABLE: Final = "CORRAL_PUBLIC_BASE_URL"
TRUSTED_PROXIES_VARIABLE: Final = "CORRAL_TRUSTED_PROXIES"
PROXY_HEADERS_VARIABLE: Final = "CORRAL_PROXY_HEADERS"

ProxyHeaders = Literal["x-forwarded", "forwarded"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES: Final = frozenset({"http", "https"})
_HOST: Final = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(:\d{1,5})?$"
)
_FORWARDED_PAIR: Final = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*'
)


class WebhookUrlSettingsError(RunnerError):
    """A webhook URL setting in the environment is invalid; the host does not start."""


@dataclass(frozen=True, slots=True)
class WebhookUrlSettings:
    """How to rebuild the URL providers call: a fixed public base, or trusted proxy headers.

    `public_base_url` wins when set: its scheme, host and path prefix replace the request's.
    Otherwise, when the peer is inside `trusted_proxies`, the header family `proxy_headers`
    (`X-Forwarded-Proto`/`X-Forwarded-Host`, or RFC 7239 `Forwarded`) supplies scheme and host.
    """

    public_base_url: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    proxy_headers: ProxyHeaders = "x-forwarded"

    def __post_init__(self) -> None:
        if self.public_base_url is not None:
            _check_base_url(self.public_base_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WebhookUrlSettings:
        """Read `CORRAL_PUBLIC_BASE_URL`, `CORRAL_TRUSTED_PROXIES` and `CORRAL_PROXY_HEADERS`.

        Raise `WebhookUrlSettingsError` naming the variable when a value is invalid.
        """
        base = environ.get(PUBLIC_BASE_URL_VARIABLE, "").strip() or None
        if base is not None:
            _check_base_url(base)
        proxies: list[IPNetwork] = []
        for item in environ.get(TRUSTED_PROXIES_VARIABLE, "").split(","):
            if item.strip():
                try:
                    proxies.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError:
                    raise WebhookUrlSettingsError(
                        f"{TRUSTED_PROXIES_VARIABLE}: {item.strip()!r} is not an address or CIDR"
                    ) from None
        family = environ.get(PROXY_HEADERS_VARIABLE, "").strip().lower() or "x-forwarded"
        if family not in ("x-forwarded", "forwarded"):
            raise WebhookUrlSettingsError(
                f"{PROXY_HEADERS_VARIABLE}={family!r}: expected x-forwarded or forwarded"
            )
        return cls(base, tuple(proxies), "forwarded" if family == "forwarded" else "x-forwarded")

    def is_trusted(self, peer: str | None) -> bool:
        """Return whether `peer` (a client address) is one of the trusted proxies."""
        if not peer or not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_proxies)


def _check_base_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.netloc or not _HOST.match(parts.netloc):
        raise WebhookUrlSettingsError(
            f"{PUBLIC_BASE_URL_VARIABLE}={url!r}: expected http(s)://host[:port][/prefix]"
        )
    if parts.query or parts.fragment:
        raise WebhookUrlSettingsError(f"{PUBLIC_BASE_URL_VARIABLE}: no query or fragment allowed")


def external_url(
    request_url: str,
    headers: Mapping[str, str],
    *,
    peer: str | None,
    settings: WebhookUrlSettings,
) -> str:
    """Return the URL the provider called: scheme, host, path and query, without a fragment.

    `request_url` is the URL as corral received it, path and query as raw as possible (with
    aiohttp: `f"{request.scheme}://{request.host}{request.raw_path}"`); `peer` is the client
    address (`request.remote`). Forwarding headers count only from a trusted peer, and only
    values that look like a scheme and a host; the last (nearest proxy's) value is used.
    """
    parts = urlsplit(request_url)
    if settings.public_base_url is not None:
        base = urlsplit(settings.public_base_url)
        path = base.path.rstrip("/") + parts.path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))
    scheme, host = parts.scheme, parts.netloc
    if settings.is_trusted(peer):
        if settings.proxy_headers == "forwarded":
            forwarded = _last_forwarded(headers)
            new_scheme, new_host = forwarded.get("proto"), forwarded.get("host")
        else:
            new_scheme = _last_value(headers, "X-Forwarded-Proto")
            new_host = _last_value(headers, "X-Forwarded-Host")
        if new_scheme is not None and new_scheme.lower() in _SCHEMES:
            scheme = new_scheme.lower()
        if new_host is not None and _HOST.match(new_host):
            host = new_host
    return urlunsplit((scheme, host, parts.path, parts.query, ""))


def request_external_url(request: web.Request, settings: WebhookUrlSettings) -> str:
    """Return `external_url` of an aiohttp request: its raw path and query, peer and headers."""
    received = f"{request.scheme}://{request.host}{request.raw_path}"
    return external_url(received, request.headers, peer=request.remote, settings=settings)


def _last_value(headers: Mapping[str, str], name: str) -> str | None:
    values = [v.strip() for line in header_values(headers, name) for v in line.split(",")]
    return values[-1] if values and values[-1] else None


def client_address(request: web.Request, settings: WebhookUrlSettings) -> str | None:
    """Return the client's address: the TCP peer's, or behind trusted proxies the forwarded one.

    From a trusted peer, the forwarding chain (`X-Forwarded-For`, or `Forwarded: for=` with
    `CORRAL_PROXY_HEADERS=forwarded`) is read from the nearest hop back, skipping trusted
    proxies; the first other valid address is the client. Anything unparseable means the peer.
    Used for the failed-authentication budget and the address handed to webhook handlers.
    """
    peer = request.remote
    if not settings.is_trusted(peer):
        return peer
    if settings.proxy_headers == "forwarded":
        hops = [element.get("for", "") for element in _forwarded_elements(request.headers)]
    else:
        hops = [
            value.strip()
            for line in header_values(request.headers, "X-Forwarded-For")
            for value in line.split(",")
        ]
    for hop in reversed(hops):
        address = _hop_address(hop)
        if address is None:
            return peer
        if not settings.is_trusted(address):
            return address
    return peer


def _hop_address(hop: str) -> str | None:
    """Return the IP address of one forwarding hop (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`)."""
    text = hop.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _last_forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the pairs of the last element of `Forwarded` (RFC 7239), names lower-cased."""
    elements = _forwarded_elements(headers)
    return elements[-1] if elements else {}


def _forwarded_elements(headers: Mapping[str, str]) -> list[dict[str, str]]:
    """Return every element of `Forwarded` (RFC 7239), names lower-cased; [] if unparseable."""
    text = ",".join(header_values(headers, "Forwarded"))
    elements: list[dict[str, str]] = [{}]
    position = 0
    while position < len(text):
        match = _FORWARDED_PAIR.match(text, position)
        if match is None:  # unparseable: trust none of it
            return []
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elements[-1][name] = value
        position = match.end()
        if position < len(text):
            separator = text[position]
            if separator == ",":
                elements.append({})
            elif separator != ";":
                return []
            position += 1
    return elements
