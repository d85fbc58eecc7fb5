"""The egress broker: grants, operator lists, address checks, redirects, caps, time, concurrency,
audit; against real aiohttp servers on 127.0.0.1 (reached through the private-network setting)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol import ErrorCode, HttpRequest
from protocol.manifest import parse_manifest
from runner.audit import AuditLog, AuditSettings
from runner.egress import EgressBroker
from runner.egress_audit import EgressEvent, audit_log_sink
from runner.egress_errors import (
    EgressDeniedError,
    EgressError,
    EgressFailedError,
    EgressReason,
    EgressSettingsError,
    to_remote_error,
)
from runner.egress_policy import (
    HostPattern,
    grants_of,
    is_covered,
    is_granted,
    non_public_kind,
    normalize_host,
    parse_patterns,
)
from runner.egress_resolve import StaticResolver
from runner.egress_settings import EgressSettings, HostOverride

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
NAMES = {
    "a.test": ["127.0.0.1"],
    "b.test": ["127.0.0.1"],
    "tls.test": ["127.0.0.1"],
    "wrong.test": ["127.0.0.1"],
    "meta.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "mixed.test": ["127.0.0.1", "10.0.0.1"],
}
HTTP_HOSTS = parse_patterns(["a.test", "b.test", "meta.test", "mapped.test", "mixed.test"])
SECRET = "PHI-4111"


# -- stub servers ----------------------------------------------------------------------------


@dataclass
class Stub:
    """An HTTP server on 127.0.0.1 that records what it received."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    sent_bytes: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    entered: int = 0

    def url(self, host: str, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def grants(self) -> list[str]:
        return [f"network.outbound:{h}:{self.port}" for h in ("a.test", "b.test", "mixed.test")]


def stub_app(stub: Stub) -> web.Application:
    async def record(request: web.Request) -> None:
        stub.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "host": request.headers.get("Host"),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": await request.read(),
            }
        )

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        headers = {"Set-Cookie": "s=1", "Keep-Alive": "timeout=5", "Proxy-Agent": "x"}
        return web.Response(body=b"hello", headers={**headers, "X-Kept": "yes"})

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"Location": request.query["to"]})

    async def loop(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=307, headers={"Location": "/loop"})

    async def big(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(800):  # 50 MiB, were anyone to read it all
                await response.write(chunk)
                stub.sent_bytes += len(chunk)
        except ConnectionError:
            pass
        return response

    async def declared(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"y" * 300_000)

    async def block(request: web.Request) -> web.Response:
        await record(request)
        stub.entered += 1
        await asyncio.wait_for(stub.release.wait(), 10)
        return web.Response(text="released")

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/big", big)
    app.router.add_get("/declared", declared)
    app.router.add_get("/block", block)
    return app


async def serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner


def port_of(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    me = Stub()
    runner = await serve(stub_app(me))
    me.port = port_of(runner)
    try:
        yield me
    finally:
        me.release.set()
        await runner.cleanup()


@dataclass
class Env:
    """A broker over the stub, with its audit events."""

    stub: Stub
    broker: EgressBroker
    events: list[EgressEvent]

    async def get(self, url: str, **changes: Any) -> Any:
        grants = changes.pop("grants", self.stub.grants)
        tenant = changes.pop("tenant", "t1")
        request = HttpRequest(method=changes.pop("method", "GET"), url=url, **changes)
        return await self.broker.request(
            tenant_id=tenant, plugin_id="dev.test.p", permissions=grants, request=request
        )

    async def denied(self, url: str, **changes: Any) -> EgressError:
        with pytest.raises(EgressError) as info:
            await self.get(url, **changes)
        return info.value


def settings(**changes: Any) -> EgressSettings:
    base = EgressSettings(allowed_private_networks=LOOPBACK, http_hosts=HTTP_HOSTS)
    return replace(base, **changes)


@pytest.fixture
async def make(stub: Stub) -> AsyncIterator[Any]:
    brokers: list[EgressBroker] = []

    def build(**changes: Any) -> Env:
        events: list[EgressEvent] = []

        async def audit(event: EgressEvent) -> None:
            events.append(event)

        ssl_context = changes.pop("ssl_context", None)
        broker = EgressBroker(
            settings(**changes), audit, resolver=StaticResolver(NAMES), ssl_context=ssl_context
        )
        brokers.append(broker)
        return Env(stub, broker, events)

    yield build
    for broker in brokers:
        await broker.close()


# -- pure policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "host", "port", "default_port", "expected"),
    [
        ("api.example.com", "api.example.com", 443, 443, True),
        ("api.example.com", "api.example.com", 80, 80, True),
        ("api.example.com", "api.example.com", 8443, 443, False),
        ("api.example.com:8443", "api.example.com", 8443, 443, True),
        ("api.example.com:8443", "api.example.com", 443, 443, False),
        ("api.example.com", "www.api.example.com", 443, 443, False),
        ("api.example.com", "api.example.com.evil.net", 443, 443, False),
        ("*.example.com", "a.example.com", 443, 443, True),
        ("*.example.com", "a.b.example.com", 443, 443, True),
        ("*.example.com", "example.com", 443, 443, False),
        ("*.example.com", "badexample.com", 443, 443, False),
        ("*.example.com:8443", "a.example.com", 443, 443, False),
        ("API.Example.com", normalize_host("api.EXAMPLE.com."), 443, 443, True),
    ],
)
def test_grant_matching(
    grant: str, host: str, port: int, default_port: int, expected: bool
) -> None:
    grants = grants_of([f"network.outbound:{grant}", "other:thing"])
    assert is_granted(grants, host, port, default_port) is expected


def test_operator_patterns_without_a_port_cover_every_port() -> None:
    deny = parse_patterns(["evil.example.com", "*.corp.example.com:8080"])
    assert is_covered(deny, "evil.example.com", 8443)
    assert is_covered(deny, "a.corp.example.com", 8080)
    assert not is_covered(deny, "a.corp.example.com", 443)
    assert not is_covered(deny, "corp.example.com", 8080)
    with pytest.raises(ValueError):
        HostPattern.parse("*example.com")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local (cloud metadata)"),
        ("64:ff9b::a00:1", "NAT64 private"),
        ("2002:7f00:1::", "6to4 loopback"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "reserved (includes Teredo)"),
        ("2001:db8::1", "documentation"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("2002:808:808::1", None),
    ],
)
def test_non_public_kind(address: str, kind: str | None) -> None:
    assert non_public_kind(ipaddress.ip_address(address)) == kind


def test_settings_from_env() -> None:
    environ = {
        "CORRAL_EGRESS_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8, 10.1.0.0/16",
        "CORRAL_EGRESS_HTTP_HOSTS": "internal.example.com *.svc.example.com",
        "CORRAL_EGRESS_DENY_HOSTS": "evil.example.com",
        "CORRAL_EGRESS_ALLOW_HOSTS": "*.example.com",
        "CORRAL_EGRESS_MAX_REQUEST_BYTES": "1000",
        "CORRAL_EGRESS_MAX_RESPONSE_BYTES": "2000",
        "CORRAL_EGRESS_TIMEOUT_S": "7.5",
        "CORRAL_EGRESS_MAX_REDIRECTS": "2",
        "CORRAL_EGRESS_CONCURRENCY": "3",
        "CORRAL_EGRESS_CONCURRENCY_WAIT_S": "0",
        "CORRAL_EGRESS_MAX_CONNECTIONS": "10",
        "CORRAL_EGRESS_HOST_OVERRIDES": "api.twilio.com=http://127.0.0.1:8081",
    }
    s = EgressSettings.from_env(environ)
    assert [str(n) for n in s.allowed_private_networks] == ["127.0.0.0/8", "10.1.0.0/16"]
    assert [str(p) for p in s.http_hosts] == ["internal.example.com", "*.svc.example.com"]
    assert s.allow_hosts is not None and [str(p) for p in s.allow_hosts] == ["*.example.com"]
    assert (s.max_request_bytes, s.max_response_bytes, s.timeout_s) == (1000, 2000, 7.5)
    assert (s.max_redirects, s.concurrency, s.concurrency_wait_s, s.max_connections) == (
        2,
        3,
        0.0,
        10,
    )
    assert str(s.host_overrides["api.twilio.com"]) == "http://127.0.0.1:8081"
    assert EgressSettings.from_env({}) == EgressSettings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CORRAL_EGRESS_ALLOWED_PRIVATE_NETWORKS", "not-a-net"),
        ("CORRAL_EGRESS_DENY_HOSTS", "http://x.example.com"),
        ("CORRAL_EGRESS_TIMEOUT_S", "soon"),
        ("CORRAL_EGRESS_CONCURRENCY", "0"),
        ("CORRAL_EGRESS_HOST_OVERRIDES", "api.twilio.com=http://stub.local:80"),
        ("CORRAL_EGRESS_HOST_OVERRIDES", "*.twilio.com=http://127.0.0.1:80"),
    ],
)
def test_settings_refuse_bad_values(name: str, value: str) -> None:
    with pytest.raises(EgressSettingsError):
        EgressSettings.from_env({name: value})


def test_host_overrides_are_refused_under_hipaa() -> None:
    environ = {
        "CORRAL_PROFILE": "hipaa",
        "CORRAL_EGRESS_HOST_OVERRIDES": "api.twilio.com=http://127.0.0.1:8081",
    }
    with pytest.raises(EgressSettingsError, match="hipaa"):
        EgressSettings.from_env(environ)


def test_to_remote_error_codes() -> None:
    denied = to_remote_error(EgressDeniedError(EgressReason.HOST_NOT_PERMITTED, "no"))
    assert (denied.code, denied.data) == (ErrorCode.EGRESS_DENIED, {"reason": "host_not_permitted"})
    timeout = to_remote_error(EgressFailedError(EgressReason.TIMEOUT, "slow"))
    assert (timeout.code, timeout.data) == (ErrorCode.TIMEOUT, {"reason": "timeout"})
    assert (
        to_remote_error(EgressFailedError(EgressReason.CONNECT_FAILED, "x")).code == "unavailable"
    )


# -- the broker against real servers -----------------------------------------------------------


async def test_permitted_request_goes_through_with_filtered_headers(make: Any) -> None:
    env = make()
    response = await env.get(
        env.stub.url("a.test", "/ok?x=1"),
        headers=[("X-Trace", "t"), ("Connection", "close"), ("Host", "evil.test")],
    )
    assert (response.status, response.body) == (200, b"hello")
    names = {k.lower() for k, _ in response.headers}
    assert {"set-cookie", "x-kept", "content-length"} <= names
    assert not names & {"keep-alive", "proxy-agent", "transfer-encoding", "connection"}
    seen = env.stub.seen[0]
    assert seen["host"] == f"a.test:{env.stub.port}"
    assert (seen["query"], seen["headers"]["x-trace"]) == ("x=1", "t")
    assert "accept-encoding" not in seen["headers"]
    (event,) = env.events
    assert (event.outcome, event.host, event.address, event.status) == (
        "allowed",
        "a.test",
        "127.0.0.1",
        200,
    )


async def test_manifest_is_accepted_as_permissions(make: Any) -> None:
    env = make()
    manifest = parse_manifest(
        f"""
        id = "dev.test.p"
        version = "1.0.0"
        display_name = "P"
        protocol_version = 1
        permissions = ["network.outbound:a.test:{env.stub.port}"]
        [[categories]]
        kind = "notification_channel"
        """
    )
    response = await env.get(env.stub.url("a.test", "/ok"), grants=manifest)
    assert response.status == 200


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://c.test:{port}/ok", "host_not_permitted"),
        ("http://a.test:1/ok", "host_not_permitted"),
        ("http://a.test/ok", "host_not_permitted"),
        ("ftp://a.test:{port}/ok", "scheme_not_allowed"),
        ("/relative", "invalid_request"),
        ("http://user:pw@a.test:{port}/ok", "invalid_request"),
        ("http://127.0.0.1:{port}/ok", "host_not_permitted"),
    ],
)
async def test_unpermitted_urls_are_denied(make: Any, url: str, reason: str) -> None:
    env = make()
    error = await env.denied(url.format(port=env.stub.port))
    assert isinstance(error, EgressDeniedError) and error.reason == reason
    assert env.stub.seen == []
    assert [e.outcome for e in env.events] == ["denied"]


async def test_plain_http_needs_the_operators_leave(make: Any) -> None:
    env = make(http_hosts=())
    error = await env.denied(env.stub.url("a.test", "/ok"))
    assert error.reason == "scheme_not_allowed"


async def test_operator_lists_restrict_grants(make: Any) -> None:
    env = make(deny_hosts=parse_patterns(["a.test"]))
    assert (await env.denied(env.stub.url("a.test", "/ok"))).reason == "operator_denied"
    env = make(allow_hosts=parse_patterns(["b.test"]))
    assert (await env.denied(env.stub.url("a.test", "/ok"))).reason == "operator_denied"
    assert (await env.get(env.stub.url("b.test", "/ok"))).status == 200


@pytest.mark.parametrize(
    ("host", "private_networks"),
    [
        ("a.test", ()),  # loopback, not allowed by the operator
        ("meta.test", LOOPBACK),  # 169.254.169.254
        ("mapped.test", LOOPBACK),  # ::ffff:127.0.0.1 is not 127.0.0.0/8
        ("mixed.test", LOOPBACK),  # one private answer refuses the name
    ],
)
async def test_non_public_addresses_are_denied(
    make: Any, host: str, private_networks: tuple[Any, ...]
) -> None:
    env = make(allowed_private_networks=private_networks)
    grants = [f"network.outbound:{host}:{env.stub.port}"]
    error = await env.denied(env.stub.url(host, "/ok"), grants=grants)
    assert error.reason == "non_public_address"
    assert error.address is not None and error.address not in error.detail
    assert env.stub.seen == []
    assert env.events[0].address == error.address


async def test_ip_literal_is_checked_like_a_resolved_name(make: Any) -> None:
    env = make(allowed_private_networks=())
    grants = [f"network.outbound:127.0.0.1:{env.stub.port}"]
    env.broker.settings = replace(env.broker.settings, http_hosts=parse_patterns(["127.0.0.1"]))
    error = await env.denied(env.stub.url("127.0.0.1", "/ok"), grants=grants)
    assert error.reason == "non_public_address"


async def test_unknown_names_and_closed_ports_fail_unavailable(make: Any) -> None:
    env = make()
    grants = ["network.outbound:nowhere.test", "network.outbound:a.test:1"]
    error = await env.denied("https://nowhere.test/x", grants=grants)
    assert isinstance(error, EgressFailedError) and error.reason == "resolution_failed"
    error = await env.denied("http://a.test:1/x", grants=grants)
    assert error.reason == "connect_failed" and error.code == ErrorCode.UNAVAILABLE


async def test_redirect_to_a_permitted_host_is_followed_without_credentials(make: Any) -> None:
    env = make()
    target = env.stub.url("b.test", "/ok")
    response = await env.get(
        env.stub.url("a.test", f"/redirect?to={target}&status=307"),
        method="POST",
        body=b"form",
        headers=[("Authorization", "Basic c2VjcmV0"), ("Cookie", "c=1"), ("X-Other", "1")],
    )
    assert response.status == 200
    first, second = env.stub.seen
    assert first["headers"]["authorization"] == "Basic c2VjcmV0"
    assert (second["method"], second["body"], second["host"]) == (
        "POST",
        b"form",
        f"b.test:{env.stub.port}",
    )
    assert "authorization" not in second["headers"] and "cookie" not in second["headers"]
    assert second["headers"]["x-other"] == "1"
    assert [(e.host, e.status, e.hop) for e in env.events] == [
        ("a.test", 307, 0),
        ("b.test", 200, 1),
    ]


async def test_same_origin_redirect_keeps_credentials_and_303_becomes_get(make: Any) -> None:
    env = make()
    response = await env.get(
        env.stub.url("a.test", "/redirect?to=/ok&status=303"),
        method="POST",
        body=b"form",
        headers=[("Authorization", "Bearer t"), ("Content-Type", "text/plain")],
    )
    assert response.status == 200
    second = env.stub.seen[1]
    assert (second["method"], second["body"]) == ("GET", b"")
    assert second["headers"]["authorization"] == "Bearer t"
    assert "content-type" not in second["headers"]


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        ("http://c.test:{port}/ok", "host_not_permitted"),
        ("http://127.0.0.1:{port}/ok", "host_not_permitted"),
        ("http://mixed.test:{port}/ok", "non_public_address"),
        ("file:///etc/passwd", "scheme_not_allowed"),
    ],
)
async def test_redirect_to_a_forbidden_place_is_denied(make: Any, to: str, reason: str) -> None:
    env = make()
    location = to.format(port=env.stub.port)
    error = await env.denied(env.stub.url("a.test", f"/redirect?to={location}"))
    assert error.reason == reason
    assert len(env.stub.seen) == 1
    assert [e.outcome for e in env.events] == ["allowed", "denied"]


async def test_redirects_are_bounded(make: Any) -> None:
    env = make(max_redirects=2)
    error = await env.denied(env.stub.url("a.test", "/loop"))
    assert error.reason == "too_many_redirects"
    assert len(env.stub.seen) == 3


async def test_response_cap_stops_reading_a_stream(make: Any) -> None:
    env = make(max_response_bytes=256 * 1024)
    started = time.monotonic()
    error = await env.denied(env.stub.url("a.test", "/big"))
    assert error.reason == "response_too_large"
    assert time.monotonic() - started < 5
    await asyncio.sleep(0.1)
    assert env.stub.sent_bytes < 25 * 1024 * 1024  # far from the 50 MiB on offer
    error = await env.denied(env.stub.url("a.test", "/declared"))
    assert error.reason == "response_too_large"
    head = await env.get(env.stub.url("a.test", "/declared"), method="HEAD")
    assert (head.status, head.body) == (200, b"")  # its Content-Length describes a GET


async def test_request_cap(make: Any) -> None:
    env = make(max_request_bytes=10)
    error = await env.denied(env.stub.url("a.test", "/ok"), method="POST", body=b"x" * 11)
    assert error.reason == "request_too_large" and env.stub.seen == []


async def test_timeout_bounds_the_whole_request(make: Any) -> None:
    env = make(timeout_s=0.3)
    started = time.monotonic()
    error = await env.denied(env.stub.url("a.test", "/block"), timeout_s=30.0)
    assert time.monotonic() - started < 2
    assert error.reason == "timeout" and to_remote_error(error).code == ErrorCode.TIMEOUT
    assert env.events[-1].outcome == "failed" and env.events[-1].reason == "timeout"


async def test_concurrency_is_limited_per_activation(make: Any) -> None:
    env = make(concurrency=2, concurrency_wait_s=0.2)
    url = env.stub.url("a.test", "/block")
    async with asyncio.TaskGroup() as group:
        held = [group.create_task(env.get(url)) for _ in range(2)]
        while env.stub.entered < 2:
            await asyncio.sleep(0.01)
        error = await env.denied(url)
        assert error.reason == "concurrency_limit"
        other = group.create_task(env.get(url, tenant="t2"))  # another activation is not held up
        while env.stub.entered < 3:
            await asyncio.sleep(0.01)
        env.stub.release.set()
    assert [t.result().status for t in [*held, other]] == [200, 200, 200]
    assert env.broker._slots._entries == {}


async def test_cancellation_releases_everything_and_is_audited(make: Any) -> None:
    env = make(concurrency=1, concurrency_wait_s=0)
    task = asyncio.create_task(env.get(env.stub.url("a.test", "/block")))
    while env.stub.entered < 1:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert env.events[-1].reason == "cancelled"
    assert env.broker._slots._entries == {}
    env.stub.release.set()
    assert (await env.get(env.stub.url("a.test", "/ok"))).status == 200
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert [t for t in others if "RequestHandler" not in repr(t.get_coro())] == []  # server's own


async def test_proxy_environment_is_ignored(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Stub()
    runner = await serve(stub_app(proxy))
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port_of(runner)}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        env = make()
        assert (await env.get(env.stub.url("a.test", "/ok"))).status == 200
        assert proxy.seen == [] and len(env.stub.seen) == 1
    finally:
        await runner.cleanup()


async def test_audit_never_holds_bodies_queries_or_headers(make: Any, tmp_path: Path) -> None:
    log = await AuditLog.open(AuditSettings(tmp_path / "audit.log", fsync=False))
    env = make()
    sink = audit_log_sink(log)
    env.broker._audit = sink
    await env.get(
        env.stub.url("a.test", f"/ok?ssn={SECRET}"),
        method="POST",
        body=SECRET.encode(),
        headers=[("Authorization", SECRET)],
    )
    await env.denied(env.stub.url("c.test", f"/x?ssn={SECRET}"))
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert SECRET not in json.dumps(lines) and "/ok" not in json.dumps(lines)
    allowed, denied = lines
    assert (allowed["action"], allowed["outcome"], allowed["tenant"]) == (
        "egress.request",
        "success",
        "t1",
    )
    assert allowed["target"] == "a.test"
    details = allowed["details"]
    assert (details["method"], details["status"], details["address"]) == ("POST", 200, "127.0.0.1")
    assert (details["request_bytes"], details["response_bytes"]) == (len(SECRET), 5)
    assert (denied["outcome"], denied["details"]["reason"]) == ("denied", "host_not_permitted")


async def test_host_override_sends_a_provider_host_to_a_stub(make: Any, stub: Stub) -> None:
    override = HostOverride.parse(f"http://127.0.0.1:{stub.port}")
    env = make(host_overrides={"api.twilio.com": override})
    grants = ["network.outbound:api.twilio.com"]
    response = await env.get("https://api.twilio.com/ok?To=1", grants=grants)
    assert response.status == 200
    assert (env.stub.seen[0]["host"], env.stub.seen[0]["query"]) == ("api.twilio.com", "To=1")
    env = make(
        host_overrides={"api.twilio.com": HostOverride.parse("http://127.0.0.1:1")},
        allowed_private_networks=(),
    )
    error = await env.denied("https://api.twilio.com/ok", grants=grants)
    assert error.reason == "non_public_address"  # an override is still address-checked


async def test_closed_broker_fails_unavailable(make: Any) -> None:
    env = make()
    await env.broker.close()
    error = await env.denied(env.stub.url("a.test", "/ok"))
    assert error.reason == "broker_closed" and error.code == ErrorCode.UNAVAILABLE


@pytest.mark.parametrize(
    "changes",
    [
        {"method": "TRACE"},
        {"headers": [("X-Bad", "a\r\nInjected: 1")]},
        {"headers": [("Bad Name", "x")]},
        {"timeout_s": 0.0},
    ],
)
async def test_malformed_requests_are_denied(make: Any, changes: dict[str, Any]) -> None:
    env = make()
    error = await env.denied(env.stub.url("a.test", "/ok"), **changes)
    assert error.reason == "invalid_request" and env.stub.seen == []


# -- TLS: connecting by address still verifies the real host name -------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    out = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("tls.test")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = out / "ca.pem", out / "cert.pem", out / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    yield ca_path, cert_path, key_path


async def test_tls_verifies_the_real_host_name(
    make: Any, tls_files: tuple[Path, Path, Path]
) -> None:
    ca_path, cert_path, key_path = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    tls_stub = Stub()
    runner = await serve(stub_app(tls_stub), server_context)
    try:
        port = port_of(runner)
        env = make(ssl_context=ssl.create_default_context(cafile=str(ca_path)))
        grants = [f"network.outbound:tls.test:{port}", f"network.outbound:wrong.test:{port}"]
        response = await env.get(f"https://tls.test:{port}/ok", grants=grants)
        assert response.status == 200 and tls_stub.seen[0]["host"] == f"tls.test:{port}"
        error = await env.denied(f"https://wrong.test:{port}/ok", grants=grants)
        assert error.reason == "tls_failed"
        default = make()  # the system's trust store does not know the test CA
        error = await default.denied(f"https://tls.test:{port}/ok", grants=grants)
        assert error.reason == "tls_failed"
    finally:
        await runner.cleanup()
