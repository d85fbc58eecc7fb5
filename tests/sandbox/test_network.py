"""Network escapes from a real sandbox: TCP, UDP, DNS and a pathname UNIX socket, per layer."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import Layer, SandboxPolicy, SandboxReport

from .conftest import RunConfined, only, require

pytestmark = pytest.mark.integration


class _Received:
    def __init__(self) -> None:
        self.connections = 0
        self.data: list[bytes] = []


@pytest.fixture
async def tcp_server() -> AsyncIterator[tuple[int, _Received]]:
    """A TCP server on 127.0.0.1 that records every connection it gets."""
    received = _Received()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.connections += 1
        received.data.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, received


@pytest.fixture
async def udp_server() -> AsyncIterator[tuple[int, _Received]]:
    """A UDP endpoint on 127.0.0.1 that records every datagram."""
    received = _Received()

    class Recorder(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            received.data.append(data)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1], received
    finally:
        transport.close()


@pytest.fixture
def unix_socket_path() -> Iterator[tuple[str, socket.socket]]:
    """A listening pathname UNIX socket that file permissions would let anyone reach."""
    directory = Path(tempfile.mkdtemp(prefix="corral-sandbox-unix-"))
    directory.chmod(0o755)
    path = str(directory / "host.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(4)
    listener.setblocking(False)
    try:
        yield path, listener
    finally:
        listener.close()
        os.unlink(path)
        directory.rmdir()


def _accepted(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


async def test_tcp_connect_to_host_server_fails(
    run_confined: RunConfined, policy: SandboxPolicy, tcp_server: tuple[int, _Received]
) -> None:
    port, received = tcp_server
    outcome = await run_confined(policy, "tcp_connect", "127.0.0.1", str(port))
    assert outcome.refused(errno.EAFNOSUPPORT), outcome.attempt
    assert received.connections == 0


async def test_udp_send_to_host_server_fails(
    run_confined: RunConfined, policy: SandboxPolicy, udp_server: tuple[int, _Received]
) -> None:
    port, received = udp_server
    outcome = await run_confined(policy, "udp_send", "127.0.0.1", str(port))
    assert outcome.refused(errno.EAFNOSUPPORT), outcome.attempt
    await asyncio.sleep(0.05)
    assert received.data == []


async def test_network_reaches_host_with_every_network_layer_off(
    run_confined: RunConfined,
    policy: SandboxPolicy,
    tcp_server: tuple[int, _Received],
    udp_server: tuple[int, _Received],
) -> None:
    """The control: the escape tests above would notice a connection."""
    tcp_port, tcp_received = tcp_server
    udp_port, udp_received = udp_server
    bare = only(policy)
    assert (await run_confined(bare, "tcp_connect", "127.0.0.1", str(tcp_port))).attempt["ok"]
    assert (await run_confined(bare, "udp_send", "127.0.0.1", str(udp_port))).attempt["ok"]
    await asyncio.sleep(0.05)
    assert tcp_received.connections == 1
    assert udp_received.data == [b"escaped"]


async def test_network_namespace_alone_leaves_no_route(
    run_confined: RunConfined,
    policy: SandboxPolicy,
    kernel_report: SandboxReport,
    tcp_server: tuple[int, _Received],
    udp_server: tuple[int, _Received],
) -> None:
    require(kernel_report, Layer.NAMESPACES)
    netns = only(policy, Layer.CREDENTIALS, Layer.NAMESPACES)
    tcp = await run_confined(netns, "tcp_connect", "127.0.0.1", str(tcp_server[0]))
    udp = await run_confined(netns, "udp_send", "127.0.0.1", str(udp_server[0]))
    assert tcp.refused(errno.ENETUNREACH), tcp.attempt
    assert udp.refused(errno.ENETUNREACH), udp.attempt
    assert tcp_server[1].connections == 0


async def test_seccomp_alone_refuses_sockets(
    run_confined: RunConfined,
    policy: SandboxPolicy,
    kernel_report: SandboxReport,
    tcp_server: tuple[int, _Received],
) -> None:
    require(kernel_report, Layer.SECCOMP)
    outcome = await run_confined(
        only(policy, Layer.SECCOMP), "tcp_connect", "127.0.0.1", str(tcp_server[0])
    )
    assert outcome.refused(errno.EAFNOSUPPORT), outcome.attempt
    assert tcp_server[1].connections == 0


async def test_landlock_alone_refuses_tcp_connect(
    run_confined: RunConfined,
    policy: SandboxPolicy,
    kernel_report: SandboxReport,
    tcp_server: tuple[int, _Received],
) -> None:
    require(kernel_report, Layer.LANDLOCK)
    if kernel_report.landlock_abi < 4:
        pytest.skip(f"Landlock ABI {kernel_report.landlock_abi} has no TCP rules (needs 4)")
    outcome = await run_confined(
        only(policy, Layer.LANDLOCK), "tcp_connect", "127.0.0.1", str(tcp_server[0])
    )
    assert outcome.refused(errno.EACCES), outcome.attempt
    assert tcp_server[1].connections == 0


async def test_dns_lookup_fails(run_confined: RunConfined, policy: SandboxPolicy) -> None:
    assert socket.getaddrinfo("localhost", 80)  # resolvable outside the sandbox
    outcome = await run_confined(policy, "dns", "localhost")
    assert outcome.refused(), outcome.attempt
    assert outcome.attempt["error"] == "gaierror"


async def test_pathname_unix_socket_is_unreachable(
    run_confined: RunConfined, policy: SandboxPolicy, unix_socket_path: tuple[str, socket.socket]
) -> None:
    path, listener = unix_socket_path
    outcome = await run_confined(policy, "unix_connect", path)
    assert outcome.refused(errno.EAFNOSUPPORT), outcome.attempt
    assert not _accepted(listener)


async def test_pathname_unix_socket_reachable_without_seccomp(
    run_confined: RunConfined, policy: SandboxPolicy, unix_socket_path: tuple[str, socket.socket]
) -> None:
    """The control, and the reason seccomp matters: namespaces do not cover UNIX sockets."""
    path, listener = unix_socket_path
    outcome = await run_confined(
        only(policy, Layer.CREDENTIALS, Layer.NAMESPACES), "unix_connect", path
    )
    assert outcome.attempt["ok"], outcome.attempt
    assert _accepted(listener)
