"""HTTPS served directly: a self-signed certificate made here, a client that trusts only it."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.runner.daemon_harness import running_daemon, stop, wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture
def certificate() -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    directory = Path(tempfile.mkdtemp(prefix="corral-tls-", dir="/tmp"))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    try:
        yield cert_path, key_path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_https_is_served_with_tls_1_2_or_newer(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    trusting = ssl.create_default_context(cafile=str(cert))
    env = {"CORRAL_TLS_CERT": str(cert)}
    async with running_daemon(env=env, args=["--tls-key", str(key)], scheme="https") as daemon:
        await wait_ready(daemon, trusting)
        connector = aiohttp.TCPConnector(ssl=trusting)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(f"{daemon.base}/readyz") as answer:
                assert answer.status == 200
            plain = daemon.base.replace("https://", "http://")
            with pytest.raises(aiohttp.ClientError):  # no plain HTTP on the TLS port
                async with http.get(f"{plain}/readyz") as answer:
                    await answer.read()
        port = int(daemon.base.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting)
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.close()
        await writer.wait_closed()
        async with aiohttp.ClientSession() as untrusting:  # the system store does not know it
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await untrusting.get(f"{daemon.base}/readyz")
        assert await stop(daemon) == 0
    assert any(f"{daemon.base}/" in line for line in daemon.stderr)


async def test_an_unusable_certificate_refuses_to_start(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    key.write_text("not a key\n")
    env = {"CORRAL_TLS_CERT": str(cert), "CORRAL_TLS_KEY": str(key)}
    async with running_daemon(env=env, scheme="https") as daemon:
        assert await daemon.exit_status() == 1
    assert any("cannot load the TLS certificate" in line for line in daemon.stderr)
    assert not any("not a key" in line for line in daemon.stderr)
