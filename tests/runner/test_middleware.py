"""The middlewares on a test app: the scope-by-route matrix, errors, request ids, limits, secrets.

The app's routes mirror the admin API's (same scopes and tenant rules) with trivial handlers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from runner.access import CALLER, OPERATOR, from_body, from_path, from_query, public, requires
from runner.auth import ApiKeys, parse_key
from runner.errors import WorkerStartError
from runner.http_errors import ApiError, read_json
from runner.install_errors import InstallError, Reason
from runner.keys import ALL_SCOPES, DuplicateKeyError, InMemoryKeyRepository, Scope
from runner.middleware import (
    PRINCIPAL,
    REQUEST_ID,
    TENANT,
    UndeclaredRouteError,
    install_middlewares,
)
from runner.ratelimit import AdminRateLimits, RateLimitSettings

READ, WRITE, MANAGE = Scope.PLUGINS_READ, Scope.PLUGINS_WRITE, Scope.KEYS_MANAGE
GENEROUS = RateLimitSettings(
    reads_per_minute=100_000, writes_per_minute=100_000, failed_auth_per_minute=100_000
)
SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {"api_key": {"type": "string", "minLength": 64}},
}
ERROR_KEYS = {"error", "message", "request_id"}


class ConfigBody(BaseModel):
    enabled: bool
    settings: dict[str, Any]


def _who(request: web.Request) -> web.Response:
    principal = request.get(PRINCIPAL)
    return web.json_response(
        {
            "tenant": request.get(TENANT),
            "key_id": principal.key_id if principal else None,
            "request_id": request[REQUEST_ID],
        }
    )


@public
async def healthz(request: web.Request) -> web.Response:
    return _who(request)


@requires(READ, tenant_from=from_query(missing="caller"))
async def list_plugins(request: web.Request) -> web.Response:
    return _who(request)


@requires(READ, tenant_from=from_path())
async def get_config(request: web.Request) -> web.Response:
    return _who(request)


@requires(WRITE, MANAGE, tenant_from=from_path())
async def put_config(request: web.Request) -> web.Response:
    body = ConfigBody.model_validate(await read_json(request))
    jsonschema.validate(body.settings, SETTINGS_SCHEMA)
    return _who(request)


@requires(WRITE, tenant_from=OPERATOR)
async def install_plugin(request: web.Request) -> web.Response:
    return _who(request)


@requires(WRITE, tenant_from=from_body())
async def activate(request: web.Request) -> web.Response:
    return _who(request)


@requires(MANAGE, tenant_from=OPERATOR)
async def list_keys(request: web.Request) -> web.Response:
    return _who(request)


@requires(READ, tenant_from=from_path())
async def active_schemas(request: web.Request) -> web.Response:
    return _who(request)


@requires(READ, tenant_from=CALLER)
async def raise_error(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    errors: dict[str, Exception] = {
        "conflict": ApiError(409, "conflict", "someone else was first"),
        "duplicate": DuplicateKeyError("a" * 16),
        "precondition": web.HTTPPreconditionFailed(),
        "gone": web.HTTPNotFound(text="no plugin 'ghost'"),
        "worker": WorkerStartError("echo", "handshake", ["token=SHOULD-NOT-LEAK"]),
        "install": InstallError(Reason.TOO_LARGE, "bundle exceeds 1 MiB"),
        "bug": RuntimeError("a bug"),
        "redirect": web.HTTPFound("/healthz"),
    }
    raise errors[kind]


@public
async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response()


@public
async def echo_json(request: web.Request) -> web.Response:
    return web.json_response({"got": await read_json(request)})


@dataclass(frozen=True)
class Route:
    """One admin route: how to call it on a tenant, what it needs, how it finds its tenant."""

    name: str
    method: str
    path: str  # `{tenant}` is replaced by the tenant the request acts on
    scopes: frozenset[Scope]
    tenant_rule: str  # "path", "body", "query", "operator"
    body: Mapping[str, Any] | None = None

    def request(self, tenant: str | None) -> tuple[str, dict[str, Any]]:
        path = self.path.replace("{tenant}", tenant or "")
        options: dict[str, Any] = {}
        if self.tenant_rule == "query" and tenant:
            path += f"?tenant_id={tenant}"
        if self.tenant_rule == "body":
            options["json"] = {"tenant_id": tenant}
        elif self.body is not None:
            options["json"] = dict(self.body)
        return path, options


GOOD_CONFIG = {"enabled": True, "settings": {"api_key": "k" * 64}}
ROUTES = [
    Route("list plugins", "GET", "/plugins", frozenset({READ}), "query"),
    Route("get config", "GET", "/tenants/{tenant}/plugins/echo/config", frozenset({READ}), "path"),
    Route(
        "put config",
        "PUT",
        "/tenants/{tenant}/plugins/echo/config",
        frozenset({WRITE, MANAGE}),
        "path",
        GOOD_CONFIG,
    ),
    Route("install", "POST", "/api/v1/admin/plugins", frozenset({WRITE}), "operator"),
    Route("activate", "POST", "/api/v1/admin/plugins/echo/activate", frozenset({WRITE}), "body"),
    Route("list keys", "GET", "/api/v1/admin/keys", frozenset({MANAGE}), "operator"),
    Route(
        "active schemas",
        "GET",
        "/api/v1/tenants/{tenant}/plugins/active-schemas",
        frozenset({READ}),
        "path",
    ),
]


def build_app(keys: ApiKeys, limits: AdminRateLimits, client_max_size: int) -> web.Application:
    app = web.Application(client_max_size=client_max_size)
    install_middlewares(
        app,
        keys,
        limits=limits,
        client_address=lambda request: request.headers.get("X-Test-Peer") or request.remote,
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/plugins", list_plugins)
    app.router.add_get("/tenants/{tenant_id}/plugins/{plugin_id}/config", get_config)
    app.router.add_put("/tenants/{tenant_id}/plugins/{plugin_id}/config", put_config)
    app.router.add_post("/api/v1/admin/plugins", install_plugin)
    app.router.add_post("/api/v1/admin/plugins/{plugin_id}/activate", activate)
    app.router.add_get("/api/v1/admin/keys", list_keys)
    app.router.add_get("/api/v1/tenants/{tenant_id}/plugins/active-schemas", active_schemas)
    app.router.add_get("/raise/{kind}", raise_error)
    app.router.add_post("/echo", echo_json)
    app.router.add_get("/slow", slow)
    return app


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    keys: ApiKeys
    limits: AdminRateLimits
    clock: FakeClock
    bodies: list[str] = field(default_factory=list)

    async def key(self, scopes: frozenset[Scope] | set[Scope], tenant: str | None = None) -> str:
        _, key = await self.keys.create("test", scopes, tenant, by=None)
        return key

    async def call(
        self, method: str, path: str, key: str | None = None, **options: Any
    ) -> tuple[int, Any, Mapping[str, str]]:
        headers = dict(options.pop("headers", {}))
        if key is not None:
            headers["X-API-Key"] = key
        async with self.client.request(method, path, headers=headers, **options) as response:
            text = await response.text()
            self.bodies.append(text)
            self.bodies.extend(f"{k}: {v}" for k, v in response.headers.items())
            body = await response.json() if response.content_type == "application/json" else text
            return response.status, body, response.headers


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env() -> AsyncIterator[EnvFactory]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(
        settings: RateLimitSettings = GENEROUS, client_max_size: int = 1024 * 1024
    ) -> Env:
        clock = FakeClock()
        keys = ApiKeys(InMemoryKeyRepository())
        limits = AdminRateLimits(settings, clock=clock)
        server = TestServer(build_app(keys, limits, client_max_size))
        await server.start_server(access_log=None)  # as `corral serve` runs it
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Env(client, keys, limits, clock)

    yield factory
    for client in clients:
        await client.close()


def assert_error(status: int, body: Any, headers: Mapping[str, str], expected: int) -> str:
    assert status == expected, body
    assert isinstance(body, dict) and ERROR_KEYS <= set(body) <= ERROR_KEYS | {"details"}
    assert body["request_id"] == headers["X-Request-ID"]
    code: str = body["error"]
    return code


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
async def test_scope_by_route_matrix(make_env: EnvFactory, route: Route) -> None:
    env = await make_env()
    path, options = route.request("acme")

    status, body, headers = await env.call(route.method, path, **options)
    assert assert_error(status, body, headers, 401) == "unauthorized"
    assert headers["WWW-Authenticate"] == "Bearer"
    for bad in ("nonsense", f"crl_{'0' * 16}_{'A' * 43}"):
        status, body, headers = await env.call(route.method, path, bad, **options)
        assert assert_error(status, body, headers, 401) == "unauthorized"
    revoked = await env.key(ALL_SCOPES)
    await env.keys.revoke((parse_key(revoked) or ("", ""))[0], by=None)
    status, body, headers = await env.call(route.method, path, revoked, **options)
    assert assert_error(status, body, headers, 401) == "unauthorized"

    for scope in route.scopes:  # every other scope, but not this one
        lacking = await env.key(ALL_SCOPES - {scope})
        status, body, headers = await env.call(route.method, path, lacking, **options)
        assert assert_error(status, body, headers, 403) == "forbidden"
        assert scope in body["message"]

    operator = await env.key(route.scopes)
    status, body, _ = await env.call(route.method, path, operator, **options)
    assert status == 200, body
    assert body["tenant"] == (None if route.tenant_rule == "operator" else "acme")

    tenant_key = await env.key(route.scopes, "acme")
    status, body, headers = await env.call(route.method, path, tenant_key, **options)
    if route.tenant_rule == "operator":
        assert assert_error(status, body, headers, 403) == "forbidden"
        return
    assert status == 200 and body["tenant"] == "acme"
    other_path, other_options = route.request("other")
    status, body, headers = await env.call(route.method, other_path, tenant_key, **other_options)
    assert assert_error(status, body, headers, 403) == "forbidden"
    assert "other" in body["message"]


async def test_write_without_keys_manage_cannot_change_plugin_config(make_env: EnvFactory) -> None:
    env = await make_env()
    path = "/tenants/acme/plugins/echo/config"
    for tenant in (None, "acme"):
        writer = await env.key({READ, WRITE}, tenant)
        status, body, headers = await env.call("PUT", path, writer, json=GOOD_CONFIG)
        assert assert_error(status, body, headers, 403) == "forbidden"
        assert body["message"] == "this key lacks scope keys:manage"
        assert (await env.call("GET", path, writer))[0] == 200
        manager = await env.key({WRITE, MANAGE}, tenant)
        assert (await env.call("PUT", path, manager, json=GOOD_CONFIG))[0] == 200


async def test_caller_and_query_tenant_rules(make_env: EnvFactory) -> None:
    env = await make_env()
    operator, tenant = await env.key({READ}), await env.key({READ}, "acme")
    assert (await env.call("GET", "/plugins", operator))[1]["tenant"] is None
    assert (await env.call("GET", "/plugins?tenant_id=zed", operator))[1]["tenant"] == "zed"
    assert (await env.call("GET", "/plugins", tenant))[1]["tenant"] == "acme"
    assert (await env.call("GET", "/plugins?tenant_id=zed", tenant))[0] == 403
    assert (await env.call("GET", "/plugins?tenant_id=a&tenant_id=b", operator))[0] == 400
    assert (await env.call("GET", "/raise/redirect", tenant, allow_redirects=False))[0] == 302


async def test_a_body_tenant_rule_refuses_tenant_keys_for_global_acts(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    path = "/api/v1/admin/plugins/echo/activate"
    operator, tenant = await env.key({WRITE}), await env.key({WRITE}, "acme")
    assert (await env.call("POST", path, operator))[1]["tenant"] is None  # no body: global
    assert (await env.call("POST", path, operator, json={"tenant_id": None}))[0] == 200
    assert (await env.call("POST", path, tenant))[0] == 403
    assert (await env.call("POST", path, tenant, json={"x": 1}))[0] == 403
    status, body, headers = await env.call("POST", path, tenant, json={"tenant_id": 7})
    assert assert_error(status, body, headers, 422) == "validation_failed"
    status, body, headers = await env.call("POST", path, tenant, data=b"{", headers=JSON)
    assert assert_error(status, body, headers, 400) == "malformed_json"


async def test_bearer_tokens_work_like_x_api_key(make_env: EnvFactory) -> None:
    env = await make_env()
    key = await env.key({READ})
    bearer = {"Authorization": f"Bearer {key}"}
    assert (await env.call("GET", "/plugins", headers=bearer))[0] == 200
    two = {"Authorization": f"Bearer {key}", "X-API-Key": await env.key({READ})}
    assert (await env.call("GET", "/plugins", headers=two))[0] == 401


async def test_a_route_without_a_declaration_stops_the_app_at_start() -> None:
    async def undeclared(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    install_middlewares(app, ApiKeys(InMemoryKeyRepository()))
    app.router.add_get("/open", undeclared)
    server = TestServer(app)
    try:
        with pytest.raises(UndeclaredRouteError) as caught:
            await server.start_server(access_log=None)
        assert sorted(caught.value.routes) == ["GET /open", "HEAD /open"]
    finally:
        await server.close()


JSON = {"Content-Type": "application/json"}


async def test_every_error_has_the_json_shape_and_the_right_status(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = await make_env(client_max_size=1024)
    key = await env.key(ALL_SCOPES)
    put = "/tenants/acme/plugins/echo/config"
    cases: list[tuple[int, str, str, str, dict[str, Any]]] = [
        (400, "malformed_json", "POST", "/echo", {"data": b'{"a": ', "headers": JSON}),
        (400, "malformed_json", "POST", "/echo", {"data": b'"\xff"', "headers": JSON}),
        (404, "not_found", "GET", "/no/such/route", {}),
        (404, "not_found", "GET", "/raise/gone", {}),
        (405, "method_not_allowed", "DELETE", "/plugins", {}),
        (409, "conflict", "GET", "/raise/conflict", {}),
        (409, "conflict", "GET", "/raise/duplicate", {}),
        (412, "precondition_failed", "GET", "/raise/precondition", {}),
        (413, "payload_too_large", "POST", "/echo", {"data": b"x" * 4096, "headers": JSON}),
        (413, "too_large", "GET", "/raise/install", {}),
        (415, "unsupported_media_type", "POST", "/echo", {"data": b"{}"}),
        (422, "validation_failed", "PUT", put, {"json": {"enabled": "maybe", "settings": {}}}),
        (
            422,
            "validation_failed",
            "PUT",
            put,
            {"json": {"enabled": True, "settings": {"api_key": 1}}},
        ),
        (503, "unavailable", "GET", "/raise/worker", {}),
        (500, "internal", "GET", "/raise/bug", {}),
    ]
    for status_expected, code, method, path, options in cases:
        status, body, headers = await env.call(method, path, key, **options)
        assert assert_error(status, body, headers, status_expected) == code, (path, body)
        if status_expected == 405:
            assert headers["Allow"] == "GET,HEAD"
        if path == "/raise/gone":
            assert body["message"] == "no plugin 'ghost'"
        if status_expected == 500:
            assert body["message"] == "internal error"
        if status_expected == 503:
            assert "SHOULD-NOT-LEAK" not in body["message"]
    bug_lines = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(bug_lines) == 1 and bug_lines[0].exc_info is not None


async def test_validation_errors_name_their_paths(make_env: EnvFactory) -> None:
    env = await make_env()
    key = await env.key(ALL_SCOPES)
    put = "/tenants/acme/plugins/echo/config"
    status, body, _ = await env.call("PUT", put, key, json={"enabled": "maybe", "settings": []})
    assert status == 422
    assert [d["path"] for d in body["details"]] == ["$.enabled", "$.settings"]
    status, body, _ = await env.call(
        "PUT", put, key, json={"enabled": True, "settings": {"api_key": "s"}}
    )
    assert status == 422
    assert body["details"] == [{"path": "$.api_key", "message": "does not satisfy minLength 64"}]


async def test_request_ids_are_accepted_generated_echoed_and_replaced(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = await make_env()
    sane = "trace-01.AB_c"
    status, body, headers = await env.call("GET", "/healthz", headers={"X-Request-ID": sane})
    assert status == 200 and body["request_id"] == sane and headers["X-Request-ID"] == sane
    assert f"request_id={sane}" in caplog.text
    generated = set()
    garbage = ["", "has space", "x" * 129, "semi;colon", "ünï", "a/b", "a:b"]
    for incoming in [None, *garbage]:
        sent = {} if incoming is None else {"X-Request-ID": incoming}
        _, body, headers = await env.call("GET", "/healthz", headers=sent)
        assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
        assert headers["X-Request-ID"] == body["request_id"]
        generated.add(body["request_id"])
    assert len(generated) == len(garbage) + 1
    assert (await env.call("GET", "/healthz", headers={"X-Request-ID": "x" * 128}))[1][
        "request_id"
    ] == "x" * 128
    for path in ("/plugins", "/nowhere", "/raise/redirect"):  # errors and redirects too
        _, _, headers = await env.call(
            "GET", path, headers={"X-Request-ID": "r-1"}, allow_redirects=False
        )
        assert headers["X-Request-ID"] == "r-1"


async def test_reads_and_writes_answer_429_with_retry_after(make_env: EnvFactory) -> None:
    env = await make_env(
        RateLimitSettings(reads_per_minute=5, writes_per_minute=2, failed_auth_per_minute=10)
    )
    key, other = await env.key(ALL_SCOPES), await env.key(ALL_SCOPES)
    put = "/tenants/acme/plugins/echo/config"
    for _ in range(2):
        assert (await env.call("PUT", put, key, json=GOOD_CONFIG))[0] == 200
    status, body, headers = await env.call("PUT", put, key, json=GOOD_CONFIG)
    assert assert_error(status, body, headers, 429) == "rate_limited"
    assert headers["Retry-After"] == "30"
    for _ in range(5):
        assert (await env.call("GET", "/plugins", key))[0] == 200  # reads have their own budget
    status, body, headers = await env.call("GET", "/plugins", key)
    assert assert_error(status, body, headers, 429) == "rate_limited"
    assert headers["Retry-After"] == "12"
    assert (await env.call("PUT", put, other, json=GOOD_CONFIG))[0] == 200  # per key
    env.clock.now += 30
    assert (await env.call("PUT", put, key, json=GOOD_CONFIG))[0] == 200


async def test_failed_authentication_is_throttled_per_address_without_revealing_keys(
    make_env: EnvFactory,
) -> None:
    env = await make_env(RateLimitSettings(failed_auth_per_minute=10))
    key = await env.key({READ})
    key_id = (parse_key(key) or ("", ""))[0]
    wrong_secret = f"crl_{key_id}_{'B' * 43}"
    unknown = f"crl_{'f' * 16}_{'B' * 43}"
    attacker = {"X-Test-Peer": "203.0.113.9"}
    answers = []
    for i in range(10):
        guess = wrong_secret if i % 2 else unknown
        status, body, _ = await env.call("GET", "/plugins", guess, headers=attacker)
        assert status == 401
        answers.append({k: v for k, v in body.items() if k != "request_id"})
    assert all(answer == answers[0] for answer in answers)  # unknown id == wrong secret
    status, body, headers = await env.call("GET", "/plugins", unknown, headers=attacker)
    assert assert_error(status, body, headers, 429) == "rate_limited"
    assert headers["Retry-After"] == "6"
    assert (await env.call("GET", "/plugins", key, headers=attacker))[0] == 429  # even valid
    assert (await env.call("GET", "/plugins", key, headers={"X-Test-Peer": "198.51.100.1"}))[
        0
    ] == 200
    assert (await env.call("GET", "/plugins", headers={"X-Test-Peer": "198.51.100.2"}))[0] == 401
    env.clock.now += 6
    assert (await env.call("GET", "/plugins", key, headers=attacker))[0] == 200


async def test_a_flood_of_random_keys_and_addresses_keeps_memory_bounded(
    make_env: EnvFactory,
) -> None:
    env = await make_env(RateLimitSettings(max_keys=20, max_addresses=50))
    for i in range(300):
        _, random_key = (secrets.token_hex(8), f"crl_{secrets.token_hex(8)}_{'C' * 43}")
        peer = {"X-Test-Peer": f"2001:db8:{i:x}::1"}
        assert (await env.call("GET", "/plugins", random_key, headers=peer))[0] == 401
    assert env.limits.tracked() == {"reads": 0, "writes": 0, "addresses": 50}


async def test_access_log_lines_carry_ids_not_keys(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner.middleware")
    env = await make_env()
    key = await env.key({READ}, "acme")
    key_id = (parse_key(key) or ("", ""))[0]
    headers = {"X-Request-ID": "req-42"}
    await env.call("GET", "/tenants/acme/plugins/echo/config?q=1", key, headers=headers)
    lines = [r.getMessage() for r in caplog.records if r.name == "runner.middleware"]
    assert any(
        re.fullmatch(
            rf"GET /tenants/acme/plugins/echo/config 200 request_id=req-42 key_id={key_id} "
            r"tenant=acme duration_ms=[0-9.]+",
            line,
        )
        for line in lines
    ), lines


async def test_no_key_or_secret_appears_in_any_response_or_log_line(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = await make_env(client_max_size=2048)
    key = await env.key(ALL_SCOPES, "acme")
    key_id, key_secret = parse_key(key) or ("", "")
    near_miss = f"crl_{key_id}_{key_secret[::-1]}"
    planted = f"PLANTED-{secrets.token_hex(12)}"
    put = "/tenants/acme/plugins/echo/config"
    auth = {"Authorization": f"Bearer {key}", "Cookie": f"session={planted}"}
    requests: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("GET", "/plugins", key, {}),
        ("GET", "/plugins", None, {"headers": auth}),
        ("GET", "/plugins", near_miss, {}),
        ("GET", f"/plugins?api_key={planted}&tenant_id=acme", key, {}),
        ("GET", f"/nowhere?token={planted}", key, {}),
        ("PUT", put, key, {"json": {"enabled": True, "settings": {"api_key": planted * 3}}}),
        ("PUT", put, key, {"json": {"enabled": True, "settings": {"api_key": planted}}}),
        ("PUT", put, key, {"json": {"enabled": planted, "settings": {"api_key": planted}}}),
        ("PUT", put, key, {"data": f'{{"settings": {{"api_key": "{planted}"'.encode()}),
        ("PUT", put, key, {"data": f'{{"api_key": "{planted}"'.encode(), "headers": JSON}),
        ("PUT", put, key, {"data": planted.encode() * 200, "headers": JSON}),
        ("POST", "/echo", None, {"data": f'["{planted}", '.encode(), "headers": JSON}),
        ("GET", "/raise/worker", key, {}),
        ("GET", "/raise/bug", key, {}),
    ]
    for method, path, sent_key, options in requests:
        await env.call(method, path, sent_key, **options)
    logged = [caplog.text] + [r.getMessage() for r in caplog.records]
    logged += [r.exc_text or "" for r in caplog.records]
    assert len(caplog.records) >= len(requests)
    for text in logged + env.bodies:
        for secret in (key, key_secret, near_miss, key_secret[::-1], planted):
            assert secret not in text, (secret, text)


async def test_a_request_cancelled_by_a_client_hanging_up_is_logged_not_answered(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner.middleware")
    env = await make_env()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await env.call("GET", "/slow", headers={"X-Request-ID": "gone"})
    async with asyncio.timeout(5):
        while "request_id=gone" not in caplog.text:
            await asyncio.sleep(0.01)
    assert "GET /slow 499 request_id=gone" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
