"""Hostile plugins reaching for the network: TCP, UDP, DNS and a pathname UNIX socket.

Each server runs in the test process on 127.0.0.1 (or a path), so an escape would be seen
there. Seccomp refuses `socket()` (EAFNOSUPPORT) before the network namespace or Landlock
are even asked; the layer tests in tests/sandbox/ check those on their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from sandbox import Layer

from .conftest import Host, assert_refused, needs_any

pytestmark = [pytest.mark.hostile, pytest.mark.asyncio(loop_scope="module")]

SECCOMP_SOCKET_ERRNO = "EAFNOSUPPORT"
GRACE_S = 0.2  # time for a connection or datagram that got through to show up


def socket_errnos(host: Host) -> set[str | None] | None:
    """Seccomp's signature when it is on; otherwise any refusal will do."""
    return {SECCOMP_SOCKET_ERRNO} if host.report.is_available(Layer.SECCOMP) else None


class Seen:
    """What reached a test server."""

    def __init__(self) -> None:
        self.events: list[str] = []


@pytest_asyncio.fixture(loop_scope="module")
async def tcp_server() -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.events.append(f"connection from {writer.get_extra_info('peername')}")
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.events.append(f"datagram {data!r} from {addr}")


@pytest_asyncio.fixture(loop_scope="module")
async def udp_server() -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Datagrams(seen), local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        yield transport.get_extra_info("sockname")[1], seen
    finally:
        transport.close()


@pytest_asyncio.fixture(loop_scope="module")
async def unix_server() -> AsyncIterator[tuple[str, Seen]]:
    """A stream server on a socket anyone may connect to: only the sandbox stands in the way."""
    seen = Seen()
    directory = tempfile.mkdtemp(prefix="corral-hostile-sock-", dir="/tmp")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "host.sock")

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.events.append("unix connection")
        writer.close()

    server = await asyncio.start_unix_server(accept, path)
    os.chmod(path, 0o777)
    try:
        yield path, seen
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory, ignore_errors=True)


async def test_tcp_connect_to_a_host_server_is_refused(
    host: Host, tcp_server: tuple[int, Seen]
) -> None:
    needs_any(host.report, Layer.SECCOMP, Layer.NAMESPACES, Layer.LANDLOCK)
    port, seen = tcp_server
    result = await host.attack("tcp", {"host": "127.0.0.1", "port": port})
    assert_refused(result, errnos=socket_errnos(host))
    await asyncio.sleep(GRACE_S)
    assert seen.events == []
    await host.assert_healthy()


async def test_udp_send_to_a_host_server_is_refused(
    host: Host, udp_server: tuple[int, Seen]
) -> None:
    needs_any(host.report, Layer.SECCOMP, Layer.NAMESPACES)  # Landlock has no UDP rules
    port, seen = udp_server
    result = await host.attack("udp", {"host": "127.0.0.1", "port": port})
    assert_refused(result, errnos=socket_errnos(host))
    await asyncio.sleep(GRACE_S)
    assert seen.events == []
    await host.assert_healthy()


async def test_dns_lookups_fail(host: Host) -> None:
    needs_any(host.report, Layer.SECCOMP, Layer.NAMESPACES)
    result = await host.attack("dns", {"names": ["example.com", "localhost"]})
    attempts = assert_refused(result)
    if host.report.is_available(Layer.LANDLOCK):
        files = [a for a in attempts if a["attempt"].startswith("read /etc/")]
        assert [a["errno"] for a in files] == ["EACCES", "EACCES"]
    await host.assert_healthy()


async def test_connecting_to_a_pathname_unix_socket_is_refused(
    host: Host, unix_server: tuple[str, Seen]
) -> None:
    needs_any(host.report, Layer.SECCOMP)  # neither netns nor Landlock ABI < 9 cover it
    path, seen = unix_server
    result = await host.attack("unix", {"path": path})
    assert_refused(result, errnos=socket_errnos(host))
    await asyncio.sleep(GRACE_S)
    assert seen.events == []
    await host.assert_healthy()
