"""Declarative HTTP providers: provider.json checks at load, and the generic runtime driven through
the protocol with a scripted `http.request` (the shipped example, and small bundles per test)."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plugins.sdk import FaxJob, FaxQuery, SendFax
from plugins.sdk.http_compile import parse_provider
from plugins.sdk.http_manifest import ProviderManifestError, check_bundle, load_provider
from plugins.sdk.http_templates import Template, TemplateError
from plugins.sdk.testing import serve_bundle
from protocol import (
    HTTP_REQUEST_METHOD,
    Endpoint,
    ErrorCode,
    HttpResponse,
    InitializeResult,
    RemoteError,
    load_manifest,
    parse_manifest,
)
from tests.plugins.fakes import (
    PLUGINS,
    FakeHttp,
    Part,
    basic_auth,
    header,
    json_answer,
    parse_multipart,
    serve,
)

PLUGIN_ID = "dev.corral.http-fax-example"
BUNDLE = "http_fax_example"
API = "https://api.phaxio.com/v2.1"
API_KEY = "key-7e3a9c01"
API_SECRET = "secret-4b8d2f6a1c9e"
CALLER_ID = "+15550002222"
TO = "+15551234567"
DOCUMENT = b"%PDF-1.4\n" + bytes(range(256)) + b"\n%%EOF\n"
CONFIG = {"api_key": API_KEY, "api_secret": API_SECRET, "caller_id": CALLER_ID}

SEND_FAX = "outbound_fax.send_fax"
GET_STATUS = "outbound_fax.get_status"
CANCEL_FAX = "outbound_fax.cancel_fax"


async def call(host: Endpoint, method: str, args: Any) -> FaxJob:
    job: FaxJob = await host.request(method, args, result_type=FaxJob)
    return job


def ok(data: dict[str, Any] | None = None, message: str = "ok") -> HttpResponse:
    body: dict[str, Any] = {"success": True, "message": message}
    if data is not None:
        body["data"] = data
    return json_answer(200, body)


# --- a small bundle per test ----------------------------------------------------------------


TOML = """\
id = "dev.corral.test.http-fax"
version = "1.0.0"
display_name = "Test HTTP fax"
protocol_version = 1
entrypoint = "{module}"
permissions = ["network.outbound:fax.example.com"]

[[categories]]
kind = "outbound_fax"

[[config]]
name = "token"
secret = true

[[config]]
name = "account"
"""

PROVIDER: dict[str, Any] = {
    "id": "testfax",
    "name": "TestFax",
    "allowed_domains": ["fax.example.com"],
    "auth": {"bearer": "{{config.token}}"},
    "actions": {
        "send_fax": {
            "method": "POST",
            "url": "https://fax.example.com/accounts/{{config.account}}/faxes",
            "body": {
                "kind": "json",
                "template": {
                    "to": "{{request.to}}",
                    "from": "{{request.caller_id}}",
                    "document": {
                        "name": "{{request.filename}}",
                        "base64": "{{request.file_base64}}",
                    },
                    "tags": "{{request.tags}}",
                    "label": "fax to {{request.to}}",
                },
            },
            "response": {"job_id": "/fax/id", "status": "$.fax.state", "error": "error.detail"},
        },
        "get_status": {
            "method": "GET",
            "url": "https://fax.example.com/faxes/{{request.job_id}}?account={{config.account}}",
            "response": {"job_id": "fax.id", "status": "fax.state", "error": "error.detail"},
        },
    },
    "status_map": {"ACCEPTED": "queued", "SENT": "success"},
}


def provider(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(PROVIDER)
    document.update(changes)
    return document


def write(directory: Path, document: dict[str, Any], toml: str = TOML) -> str:
    """Write a bundle with a unique entry module (in-process serving caches modules by name)."""
    module = f"provider_{uuid.uuid4().hex}"
    directory.mkdir(exist_ok=True)
    (directory / "plugin.toml").write_text(toml.format(module=module))
    (directory / "provider.json").write_text(json.dumps(document))
    (directory / f"{module}.py").write_text(
        "from plugins.sdk.http_manifest import load_provider\n\nplugin = load_provider(__file__)\n"
    )
    return module


def problems(document: dict[str, Any], toml: str = TOML) -> list[str]:
    manifest = parse_manifest(toml.format(module="m"))
    with pytest.raises(ProviderManifestError) as info:
        parse_provider(json.dumps(document).encode(), manifest)
    return info.value.problems


@contextlib.asynccontextmanager
async def serve_tmp(
    tmp_path: Path, http: FakeHttp, document: dict[str, Any], config: dict[str, Any]
) -> AsyncIterator[tuple[Endpoint, InitializeResult]]:
    write(tmp_path / "bundle", document)
    async with serve_bundle(
        tmp_path / "bundle",
        plugin_id="dev.corral.test.http-fax",
        config=config,
        host_functions={HTTP_REQUEST_METHOD: http},
    ) as session:
        yield session


TMP_CONFIG = {"token": "tok-9f8e7d6c5b4a", "account": "acme/east"}


# --- the shipped example --------------------------------------------------------------------


def test_the_example_bundle_is_valid_and_grants_only_its_domain() -> None:
    manifest = load_manifest(PLUGINS / BUNDLE)
    provider = check_bundle(PLUGINS / BUNDLE)
    assert manifest.id == PLUGIN_ID and manifest.outbound_hosts == ["api.phaxio.com"]
    assert sorted(provider.actions) == ["cancel_fax", "get_status", "send_fax"]
    assert {a.host for a in provider.actions.values()} == {"api.phaxio.com"}
    assert provider.secret_fields == {"api_key", "api_secret"}  # auth fields count as secret


async def test_handshake_reports_the_outbound_fax_methods() -> None:
    async with serve(BUNDLE, PLUGIN_ID, CONFIG) as (_, info):
        assert info.categories == ["outbound_fax"]
        assert sorted(info.methods) == [CANCEL_FAX, GET_STATUS, SEND_FAX]


async def test_send_fax_posts_multipart_with_basic_auth_and_config_fallbacks() -> None:
    http = FakeHttp(ok({"id": 12345}, "Fax queued for sending"))
    args = SendFax(to=TO, document=DOCUMENT, filename='re"port\r\n.pdf', header_text="ACME")
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, SEND_FAX, args)
    request = http.only
    assert (request.method, request.url, request.timeout_s) == ("POST", f"{API}/faxes", 60.0)
    assert header(request, "Authorization") == basic_auth(API_KEY, API_SECRET)
    assert header(request, "Accept") == "application/json"
    content_type = header(request, "Content-Type")
    assert content_type is not None and content_type.startswith("multipart/form-data; boundary=")
    assert parse_multipart(content_type, request.body) == [
        Part("to", None, "text/plain", TO.encode()),
        Part("caller_id", None, "text/plain", CALLER_ID.encode()),  # from config
        Part("header_text", None, "text/plain", b"ACME"),
        Part("file", "re_port__.pdf", "application/pdf", DOCUMENT),
    ]
    assert job == FaxJob(job_id="12345", status="queued")


async def test_send_fax_by_url_leaves_out_the_file_and_prefers_the_requests_caller_id() -> None:
    http = FakeHttp(ok({"id": 7}))
    args = SendFax(to=TO, content_url="https://docs.example.com/a.pdf", caller_id="+15550009999")
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        await call(host, SEND_FAX, args)
    content_type = header(http.only, "Content-Type")
    assert content_type is not None
    parts = parse_multipart(content_type, http.only.body)
    assert [(p.name, p.data) for p in parts] == [
        ("to", TO.encode()),
        ("content_url", b"https://docs.example.com/a.pdf"),
        ("caller_id", b"+15550009999"),
    ]


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("queued", "queued"),
        ("inprogress", "in_progress"),
        ("success", "success"),
        ("Failure", "failed"),  # case is ignored
        ("cancelled", "cancelled"),
        ("somethingnew", "in_progress"),  # unknown_status
    ],
)
async def test_get_status_maps_the_providers_word(word: str, status: str) -> None:
    data = {"id": 12345, "status": word, "num_pages": 3, "error_type": None}
    http = FakeHttp(ok(data))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, GET_STATUS, FaxQuery(job_id="12345"))
    assert (http.only.method, http.only.url) == ("GET", f"{API}/faxes/12345")
    assert http.only.body == b"" and header(http.only, "Content-Type") is None
    assert job == FaxJob(job_id="12345", status=status, provider_status=word, pages=3)


async def test_get_status_reports_the_jobs_error_with_numbers_masked() -> None:
    data = {
        "id": 5,
        "status": "failure",
        "error_type": "lineError",
        "error_message": f"No answer from {TO}",
    }
    http = FakeHttp(ok(data))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, GET_STATUS, FaxQuery(job_id="5"))
    assert (job.status, job.error_code) == ("failed", "lineError")
    assert job.error_message == "No answer from +1555***4567"


async def test_cancel_fax_confirms_with_the_requests_job_id() -> None:
    http = FakeHttp(ok(message="Fax canceled"))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        job = await call(host, CANCEL_FAX, FaxQuery(job_id="12345"))
    assert (http.only.method, http.only.url) == ("POST", f"{API}/faxes/12345/cancel")
    assert job == FaxJob(job_id="12345", status="cancelled")


async def test_url_values_are_percent_encoded() -> None:
    http = FakeHttp(ok({"id": 1, "status": "queued"}))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        await call(host, GET_STATUS, FaxQuery(job_id="1/../../admin?x=1#y"))
    assert http.only.url == f"{API}/faxes/1%2F..%2F..%2Fadmin%3Fx%3D1%23y"
    assert urllib.parse.urlsplit(http.only.url).netloc == "api.phaxio.com"


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, "auth_failed", False),
        (404, "not_found", False),
        (422, "invalid_request", False),
        (429, "rate_limited", True),
        (503, "provider_error", True),
    ],
)
async def test_a_non_2xx_answer_is_a_provider_error(
    status: int, code: str, retryable: bool
) -> None:
    answer = json_answer(
        status, {"success": False, "message": f"bad number {TO}"}, {"Retry-After": "7"}
    )
    http = FakeHttp(answer)
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as info:
            await call(host, GET_STATUS, FaxQuery(job_id="1"))
    assert info.value.code == ErrorCode.PLUGIN_ERROR
    assert (
        info.value.message == f"Phaxio refused get_status (HTTP {status}): bad number +1555***4567"
    )
    assert info.value.data == {
        "code": code,
        "retryable": retryable,
        "http_status": status,
        "retry_after_s": 7,
    }


async def test_success_false_on_a_2xx_is_a_provider_error() -> None:
    http = FakeHttp(json_answer(200, {"success": False, "message": "nope"}))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as info:
            await call(host, CANCEL_FAX, FaxQuery(job_id="1"))
    assert info.value.message == "Phaxio reported failure: nope"
    assert info.value.data == {"code": "provider_error", "retryable": False, "http_status": 200}


async def test_a_host_refusal_keeps_its_code_and_hides_secrets() -> None:
    denied = RemoteError(ErrorCode.EGRESS_DENIED, f"no grant for evil.example (key {API_SECRET})")
    http = FakeHttp(denied)
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        with pytest.raises(RemoteError) as info:
            await call(host, GET_STATUS, FaxQuery(job_id="1"))
    assert info.value.code == ErrorCode.EGRESS_DENIED
    assert API_SECRET not in info.value.message and "***" in info.value.message


async def test_secrets_appear_in_no_log_line_and_no_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"invalid credentials {API_KEY}:{API_SECRET}"
    http = FakeHttp(ok({"id": 9}), json_answer(401, {"success": False, "message": echo}))
    async with serve(BUNDLE, PLUGIN_ID, CONFIG, http) as (host, _):
        await call(host, SEND_FAX, SendFax(to=TO, document=DOCUMENT))
        with pytest.raises(RemoteError) as info:
            await call(host, GET_STATUS, FaxQuery(job_id="9"))
    assert info.value.message == "Phaxio refused get_status (HTTP 401): invalid credentials ***:***"
    assert "send_fax to api.phaxio.com: HTTP 200" in caplog.text
    for secret in (API_KEY, API_SECRET, basic_auth(API_KEY, API_SECRET)):
        assert secret not in caplog.text


async def test_a_missing_credential_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(RemoteError) as info:
        async with serve(BUNDLE, PLUGIN_ID, {"api_key": API_KEY}):
            pass
    assert info.value.message == "auth needs a value for {{config.api_secret}}"
    assert info.value.data == {"code": "invalid_config"}


# --- other body kinds, through a small bundle -----------------------------------------------


async def test_a_json_body_keeps_types_and_drops_absent_values(tmp_path: Path) -> None:
    http = FakeHttp(json_answer(202, {"fax": {"id": "f-1", "state": "ACCEPTED"}}))
    args = SendFax(to=TO, document=b"%PDF", filename="a.pdf", tags={"order": "7"})
    async with serve_tmp(tmp_path, http, PROVIDER, TMP_CONFIG) as (host, _):
        job = await call(host, SEND_FAX, args)
    request = http.only
    assert request.url == "https://fax.example.com/accounts/acme%2Feast/faxes"
    assert header(request, "Authorization") == "Bearer tok-9f8e7d6c5b4a"
    assert header(request, "Content-Type") == "application/json"
    assert json.loads(request.body) == {
        "to": TO,  # "from" is absent: no caller id anywhere
        "document": {"name": "a.pdf", "base64": base64.b64encode(b"%PDF").decode()},
        "tags": {"order": "7"},
        "label": f"fax to {TO}",
    }
    assert job == FaxJob(job_id="f-1", status="queued", provider_status="ACCEPTED")


async def test_a_form_body_is_url_encoded(tmp_path: Path) -> None:
    document = provider()
    document["actions"]["send_fax"]["body"] = {
        "kind": "form",
        "template": {"To": "{{request.to}}", "MediaUrl": "{{request.content_url}}"},
    }
    http = FakeHttp(json_answer(200, {"fax": {"id": 3}}))
    args = SendFax(to=TO, content_url="https://d.example.com/x.pdf?a=1&b=2")
    async with serve_tmp(tmp_path, http, document, TMP_CONFIG) as (host, _):
        await call(host, SEND_FAX, args)
    assert header(http.only, "Content-Type") == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(http.only.body.decode()) == {
        "To": [TO],
        "MediaUrl": ["https://d.example.com/x.pdf?a=1&b=2"],
    }


async def test_an_action_the_manifest_lacks_is_not_supported(tmp_path: Path) -> None:
    async with serve_tmp(tmp_path, FakeHttp(), PROVIDER, TMP_CONFIG) as (host, _):
        with pytest.raises(RemoteError) as info:
            await call(host, CANCEL_FAX, FaxQuery(job_id="1"))
    assert info.value.data == {"code": "not_supported", "retryable": False}


async def test_a_value_a_url_needs_is_refused_before_any_request(tmp_path: Path) -> None:
    http = FakeHttp()
    async with serve_tmp(tmp_path, http, PROVIDER, {"token": "tok-9f8e7d6c5b4a"}) as (host, _):
        with pytest.raises(RemoteError) as info:
            await call(host, SEND_FAX, SendFax(to=TO))
    assert info.value.message == "send_fax needs a value for {{config.account}}"
    assert info.value.data == {"code": "invalid_config", "retryable": False}
    assert http.requests == []


async def test_a_header_value_with_a_line_break_is_refused(tmp_path: Path) -> None:
    document = provider()
    document["actions"]["send_fax"]["headers"] = {"X-Label": "{{request.header_text}}"}
    http = FakeHttp()
    async with serve_tmp(tmp_path, http, document, TMP_CONFIG) as (host, _):
        with pytest.raises(RemoteError) as info:
            await call(host, SEND_FAX, SendFax(to=TO, header_text="a\r\nX-Evil: 1"))
    assert info.value.message == "header X-Label would contain a line break"
    assert http.requests == []


async def test_requires_refuses_a_request_without_the_value(tmp_path: Path) -> None:
    document = provider()
    document["actions"]["send_fax"]["requires"] = ["request.document"]
    http = FakeHttp()
    async with serve_tmp(tmp_path, http, document, TMP_CONFIG) as (host, _):
        with pytest.raises(RemoteError) as info:
            await call(host, SEND_FAX, SendFax(to=TO, content_url="https://d.example.com/x"))
    assert info.value.message == "send_fax needs {{request.document}}"
    assert http.requests == []


# --- refusals at load -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"url": "https://fax.example.com/{{config.acount}}"},
            "$.actions.send_fax.url: config.acount is not a plugin.toml [[config]] field "
            "(known: account, token)",
        ),
        (
            {"url": "https://fax.example.com/{{request.recipient}}"},
            "$.actions.send_fax.url: send_fax has no request.recipient (known: caller_id, "
            "content_type, content_url, document, file_base64, filename, header_text, tags, to)",
        ),
        (
            {"url": "https://evil.example.net/faxes"},
            "$.actions.send_fax.url: host 'evil.example.net' is not in $.allowed_domains",
        ),
        (
            {"url": "https://fax.example.com:8443/faxes"},
            "$.actions.send_fax.url: host 'fax.example.com' is not in $.allowed_domains",
        ),
        (
            {"url": "https://{{config.account}}.example.com/faxes"},
            "$.actions.send_fax.url: the host must be literal, not a placeholder",
        ),
        (
            {"url": "http://fax.example.com/faxes"},
            "$.actions.send_fax.url: must start with https://",
        ),
        (
            {"url": "https://fax.example.com/{{request.document}}"},
            "$.actions.send_fax.url: request.document holds bytes, not text",
        ),
        (
            {"url": "https://fax.example.com/{{ eval(1) }}"},
            "$.actions.send_fax.url: 'eval(1)' is not a path under config or request like "
            "config.api_key",
        ),
        ({"method": "FETCH"}, "$.actions.send_fax.method: not one of"),
        (
            {"headers": {"Authorization": "Basic x"}},
            "$.actions.send_fax.headers.Authorization: conflicts with $.auth",
        ),
        ({"headers": {"Host": "x"}}, "$.actions.send_fax.headers.Host: is set by the host"),
        (
            {"body": {"kind": "multipart", "files": {"f": {"data": "{{request.to}}"}}}},
            "$.actions.send_fax.body.files.f.data: request.to holds text, not bytes",
        ),
        (
            {"response": {"status_map": {"x": "done"}}},
            "$.actions.send_fax.response.status_map.x: 'done' is not one of",
        ),
    ],
)
def test_a_bad_send_fax_action_is_refused_with_its_path(
    change: dict[str, Any], expected: str
) -> None:
    document = provider()
    document["actions"]["send_fax"].update(change)
    found = problems(document)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"allowed_domains": ["fax.example.com", "api.other.com"]},
            "$.allowed_domains: must equal plugin.toml's network.outbound permissions "
            "(only here: ['api.other.com'], only in plugin.toml: [])",
        ),
        ({"actions": {}}, "$.actions: outbound_fax needs a 'send_fax' action"),
        ({"auth": {"bearer": "{{request.to}}"}}, "$.auth.bearer: only config.* is available"),
        ({"auth": {}}, "$.auth: give exactly one of basic or bearer"),
        ({"unknown_status": "maybe"}, "$.unknown_status: 'maybe' is not one of"),
        ({"timeout_ms": 0}, "$.timeout_ms: must be 1..300000"),
        ({"extra": 1}, "$: Object contains unknown field `extra`"),
        ({"actions": {"send_sms": {}}}, "$.actions[...]: Object missing required field `method`"),
    ],
)
def test_a_bad_provider_is_refused_with_its_path(changes: dict[str, Any], expected: str) -> None:
    found = problems(provider(**changes))
    assert any(p.startswith(expected) for p in found), found


def test_an_action_that_is_no_method_is_refused() -> None:
    document = provider()
    document["actions"]["send_sms"] = document["actions"]["get_status"]
    assert problems(document) == [
        "$.actions.send_sms: is not a method of the declared categories "
        "(cancel_fax, get_status, send_fax)"
    ]


def test_a_category_the_runtime_cannot_serve_is_refused() -> None:
    toml = TOML.replace('kind = "outbound_fax"', 'kind = "notification_channel"')
    assert problems(PROVIDER, toml)[0].startswith(
        "$: plugin.toml declares 'notification_channel'; supported: outbound_fax"
    )


def test_every_problem_is_listed() -> None:
    document = provider(timeout_ms=0)
    document["actions"]["get_status"]["url"] = "https://elsewhere.example.org/{{config.nope}}"
    assert [p.split(":")[0] for p in problems(document)] == [
        "$.timeout_ms",
        "$.actions.get_status.url",
        "$.actions.get_status.url",
    ]


def test_load_provider_raises_for_a_bad_bundle(tmp_path: Path) -> None:
    document = provider()
    document["actions"]["send_fax"]["url"] = "https://fax.example.com/{{config.secret}}"
    module = write(tmp_path, document)
    with pytest.raises(ProviderManifestError) as info:
        load_provider(tmp_path / f"{module}.py")
    assert info.value.source == str(tmp_path / "provider.json")
    assert info.value.problems[0].startswith("$.actions.send_fax.url: config.secret is not")


async def test_the_worker_refuses_to_start_a_bad_bundle_and_names_the_problem(
    tmp_path: Path,
) -> None:
    document = provider()
    document["actions"]["send_fax"]["url"] = "https://evil.example.net/faxes"
    with pytest.raises(RemoteError) as info:
        async with serve_tmp(tmp_path, FakeHttp(), document, TMP_CONFIG):
            pass
    assert info.value.code == ErrorCode.PLUGIN_ERROR
    assert "$.actions.send_fax.url: host 'evil.example.net' is not in $.allowed_domains" in (
        info.value.message
    )


def test_json_that_is_not_json_is_refused() -> None:
    manifest = parse_manifest(TOML.format(module="m"))
    with pytest.raises(ProviderManifestError) as info:
        parse_provider(b"{", manifest)
    assert info.value.problems[0].startswith("$: not JSON")


# --- templates ------------------------------------------------------------------------------


def test_a_template_renders_alternatives_and_encodes_only_values() -> None:
    template = Template.parse("/a/{{ request.x | config.x }}?q={{request.n}}")
    scope = {"config": {"x": "c/d"}, "request": {"x": None, "n": True}}
    assert template.render(scope, lambda s: urllib.parse.quote(s, safe="")) == "/a/c%2Fd?q=true"


@pytest.mark.parametrize("text", ["{{request.to", "{{}}", "{{x.y}}", "a}}b", "{{request}}"])
def test_a_malformed_template_is_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        Template.parse(text)
