"""Name resolution for the egress broker: the `Resolver` seam, the system resolver, and a static
one for tests.

Resolution only produces candidate addresses; the broker checks every one of them and then
connects to a checked address by IP, so nothing is resolved twice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol

from .egress_errors import EgressFailedError, EgressReason
from .egress_policy import IPAddress, normalize_host


class Resolver(Protocol):
    """Resolve a host name to the addresses a TCP connection to `port` could use."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Return the addresses in preference order; raise EgressFailedError(resolution_failed)."""
        ...


class SystemResolver:
    """Resolve with the system's `getaddrinfo` (in the loop's executor)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Return the host's addresses, deduplicated, in the order getaddrinfo gave them."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError) as exc:
            raise EgressFailedError(
                EgressReason.RESOLUTION_FAILED, f"cannot resolve {host}", host=host
            ) from exc
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            try:
                address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            except ValueError:
                continue
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise EgressFailedError(
                EgressReason.RESOLUTION_FAILED, f"{host} has no usable address", host=host
            )
        return addresses


class StaticResolver:
    """Resolve from a fixed host → addresses mapping (tests); unknown hosts fail to resolve."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table = {
            normalize_host(host): [ipaddress.ip_address(a) for a in addresses]
            for host, addresses in table.items()
        }

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Return the addresses listed for `host`; raise resolution_failed when none are."""
        addresses = self._table.get(normalize_host(host))
        if not addresses:
            raise EgressFailedError(
                EgressReason.RESOLUTION_FAILED, f"cannot resolve {host}", host=host
            )
        return list(addresses)
