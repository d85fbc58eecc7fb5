"""Pure egress policy: host patterns (manifest grants and operator lists) and the classification
of addresses as public or not.

No I/O here: the broker (`runner/egress.py`) resolves names and connects; this module only
answers whether a (host, port) is granted and whether an address may be connected to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from protocol.manifest import OUTBOUND_PREFIX

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_LABEL: Final = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_PATTERN: Final = re.compile(
    rf"^(?P<wild>\*\.)?(?P<host>{_LABEL}(?:\.{_LABEL})+)(?::(?P<port>\d{{1,5}}))?$"
)

# IANA special-purpose IPv4 blocks that are not globally reachable. Listed explicitly rather
# than taken from `ipaddress.is_global`, whose answer changed between Python releases.
_V4_BLOCKS: Final[tuple[tuple[ipaddress.IPv4Network, str], ...]] = tuple(
    (ipaddress.IPv4Network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255
    )
)
_V6_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_V6_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_V6_6TO4: Final = ipaddress.IPv6Network("2002::/16")
_V6_BLOCKS: Final[tuple[tuple[ipaddress.IPv6Network, str], ...]] = tuple(
    (ipaddress.IPv6Network(net), kind)
    for net, kind in (
        ("2001::/23", "reserved (includes Teredo)"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
    )
)


@dataclass(frozen=True, slots=True)
class HostPattern:
    """`host`, or `*.host` for its subdomains at any depth (never the apex), with an optional port.

    Hosts are compared in lower case, without a trailing dot, in their ASCII (punycode) form.
    """

    host: str
    is_wildcard: bool = False
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Parse `api.example.com`, `*.example.com` or either with `:port`; raise ValueError."""
        match = _PATTERN.match(text.strip().lower())
        if match is None:
            raise ValueError(f"{text!r} is not a host or *.domain, optionally with :port")
        port = match.group("port")
        if port is not None and not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: port out of range")
        return cls(
            match.group("host"),
            match.group("wild") is not None,
            None if port is None else int(port),
        )

    def matches_host(self, host: str) -> bool:
        """Return whether `host` (normalized) is this host, or a subdomain of it for `*.`."""
        if self.is_wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def grants(self, host: str, port: int, default_port: int) -> bool:
        """Match as a manifest grant: without a port, only the scheme's default port."""
        return self.matches_host(host) and port == (self.port or default_port)

    def covers(self, host: str, port: int) -> bool:
        """Match as an operator list entry: without a port, every port."""
        return self.matches_host(host) and (self.port is None or self.port == port)

    def __str__(self) -> str:
        text = ("*." if self.is_wildcard else "") + self.host
        return text if self.port is None else f"{text}:{self.port}"


def normalize_host(host: str) -> str:
    """Return `host` lower-cased, without one trailing dot (the form patterns match)."""
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def parse_patterns(texts: Iterable[str]) -> tuple[HostPattern, ...]:
    """Parse operator host patterns; raise ValueError naming the first bad one."""
    return tuple(HostPattern.parse(t) for t in texts if t.strip())


def grants_of(permissions: Sequence[str]) -> tuple[HostPattern, ...]:
    """Return the host patterns of a plugin's `network.outbound:` permissions.

    Other permissions and malformed grants (a validated manifest has none) grant nothing.
    """
    return _grants(tuple(permissions))


@lru_cache(maxsize=256)
def _grants(permissions: tuple[str, ...]) -> tuple[HostPattern, ...]:
    patterns: list[HostPattern] = []
    for permission in permissions:
        if permission.startswith(OUTBOUND_PREFIX):
            try:
                patterns.append(HostPattern.parse(permission[len(OUTBOUND_PREFIX) :]))
            except ValueError:
                continue
    return tuple(patterns)


def is_granted(grants: Sequence[HostPattern], host: str, port: int, default_port: int) -> bool:
    """Return whether one of the manifest's grants permits `host:port`."""
    return any(g.grants(host, port, default_port) for g in grants)


def is_covered(patterns: Sequence[HostPattern], host: str, port: int) -> bool:
    """Return whether one of an operator list's patterns covers `host:port`."""
    return any(p.covers(host, port) for p in patterns)


def non_public_kind(address: IPAddress) -> str | None:
    """Return what kind of non-public address `address` is, or None if it is public.

    IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) addresses are
    judged by the IPv4 address they embed; everything outside global unicast `2000::/3` is
    refused, and Teredo (`2001::/32`) with the rest of `2001::/23`.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return next((kind for net, kind in _V4_BLOCKS if address in net), None)
    if address.ipv4_mapped is not None:
        return _embedded(address.ipv4_mapped, "IPv4-mapped")
    if address in _V6_NAT64:
        return _embedded(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64")
    if address in _V6_6TO4:
        return _embedded(ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF), "6to4")
    if address not in _V6_GLOBAL_UNICAST:
        if address.is_loopback:
            return "loopback"
        if address.is_link_local:
            return "link-local"
        if address.is_multicast:
            return "multicast"
        if address.is_unspecified:
            return "unspecified"
        return "private" if address.is_private else "reserved"
    return next((kind for net, kind in _V6_BLOCKS if address in net), None)


def _embedded(v4: ipaddress.IPv4Address, form: str) -> str | None:
    kind = non_public_kind(v4)
    return None if kind is None else f"{form} {kind}"


def is_allowed_private(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """Return whether the operator allowed `address` although it is not public.

    Only the address as given is compared: allowing 127.0.0.0/8 does not allow ::ffff:127.0.0.1.
    """
    return any(address.version == net.version and address in net for net in networks)
