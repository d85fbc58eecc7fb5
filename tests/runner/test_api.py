"""The admin API end to end: a real service, real sandboxed workers, the real config store.

Every answer is also checked against the served OpenAPI document (see `api_harness`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from protocol import RemoteError
from protocol.categories.notification_channel import SendNotification
from runner.audit_verify import verify
from runner.config_model import ConfigDocument
from runner.keys import Scope
from runner.ratelimit import RateLimitSettings
from runner.supervisor import ActivationKey
from tests.runner.api_harness import DEMO, PHAXIO, TWILIO, Api, running_api

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SECRET = "tok-" + secrets.token_hex(12)
TWILIO_SETTINGS = {
    "account_sid": "AC" + "0" * 32,
    "auth_token": SECRET,
    "from_number": "+15550001111",
}
A, B = "tenant-a", "tenant-b"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api() -> AsyncIterator[Api]:
    async with running_api() as api:
        yield api


def config_path(plugin_id: str, tenant: str | None = None) -> str:
    query = f"?tenant_id={tenant}" if tenant else ""
    return f"/plugins/{plugin_id}/config{query}"


async def put_twilio(api: Api, tenant: str, **changes: Any) -> Any:
    body = {"enabled": True, "settings": {**TWILIO_SETTINGS, **changes}}
    return await api.call("PUT", config_path(TWILIO, tenant), json_body=body)


# -- health -----------------------------------------------------------------------------------


async def test_healthz_and_readyz_need_no_key(api: Api) -> None:
    assert (await api.call("GET", "/healthz", key=None)).body == {"status": "ok"}
    ready = await api.call("GET", "/readyz", key=None)
    assert ready.status == 200 and ready.body["status"] == "ready"
    assert {c["name"] for c in ready.body["checks"]} >= {"config_store", "sandbox"}


# -- plugins and config -----------------------------------------------------------------------


async def test_plugins_lists_every_installed_plugin_for_the_callers_tenant(api: Api) -> None:
    answer = await api.call("GET", "/plugins")
    assert answer.status == 200 and answer.body["tenant_id"] == "global"
    by_id = {p["id"]: p for p in answer.body["plugins"]}
    assert {TWILIO, PHAXIO} <= set(by_id)
    twilio = by_id[TWILIO]
    assert twilio["type"] == "notification_channel" and twilio["enabled"] is False
    assert twilio["settings_schema"]["properties"]["auth_token"]["writeOnly"] is True
    assert twilio["manifest"]["id"] == TWILIO


async def test_put_config_validates_stores_masks_and_starts_workers(api: Api) -> None:
    answer = await put_twilio(api, A)
    assert answer.status == 200, answer.text
    assert answer.body["settings"]["auth_token"] == "***"
    assert answer.body["enabled"] is True and answer.body["workers"] == "started"
    etag = answer.headers["ETag"]

    read = await api.call("GET", config_path(TWILIO, A))
    assert read.body["settings"] == {**TWILIO_SETTINGS, "auth_token": "***"}
    assert read.headers["ETag"] == etag

    # The secret is encrypted at rest and decrypted only for the tenant's workers.
    assert SECRET not in api.service.store.path.read_text()
    assert (await api.service.store.plugin_config(A, TWILIO))["auth_token"] == SECRET
    workers = await api.call("GET", "/api/v1/workers")
    mine = [w for w in workers.body["workers"] if w["tenant_id"] == A]
    assert mine and mine[0]["state"] == "ready" and mine[0]["pid"] and mine[0]["rss_bytes"]

    listing = await api.call("GET", f"/plugins?tenant_id={A}")
    twilio = next(p for p in listing.body["plugins"] if p["id"] == TWILIO)
    assert twilio["enabled"] is True and twilio["settings"]["auth_token"] == "***"


async def test_put_config_keeps_a_secret_sent_back_masked_and_switches_workers(api: Api) -> None:
    await put_twilio(api, A)
    before = api.service.host.supervisor.statuses()
    pid_before = next(a for a in before if a.tenant_id == A).slots[0].pid
    answer = await put_twilio(api, A, auth_token="***", from_number="+15550009999")
    assert answer.status == 200 and answer.body["workers"] == "switched"
    stored = await api.service.store.plugin_config(A, TWILIO)
    assert stored["auth_token"] == SECRET and stored["from_number"] == "+15550009999"
    after = next(a for a in api.service.host.supervisor.statuses() if a.tenant_id == A)
    assert after.slots[0].pid != pid_before
    again = await put_twilio(api, A, auth_token="***", from_number="+15550009999")
    assert again.body["workers"] == "unchanged"


async def test_masked_secret_with_nothing_stored_is_refused(api: Api) -> None:
    answer = await put_twilio(api, "tenant-fresh", auth_token="***")
    assert answer.status == 422 and "auth_token" in answer.body["message"]


async def test_schema_violations_are_listed_with_their_paths(api: Api) -> None:
    body = {"enabled": True, "settings": {"account_sid": 5, "auth_token": SECRET, "bogus": 1}}
    answer = await api.call("PUT", config_path(TWILIO, B), json_body=body)
    assert answer.status == 422 and answer.body["error"] == "validation_failed"
    paths = {d["path"] for d in answer.body["details"]}
    assert paths == {
        "$.settings.account_sid",
        "$.settings.from_number",
        "$.settings.bogus",
    }
    assert SECRET not in answer.text
    assert (await api.call("GET", config_path(TWILIO, B))).body["enabled"] is False


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"enabled": "yes", "settings": {}}, 422, "validation_failed"),
        ({"settings": {}}, 422, "validation_failed"),
        ({"enabled": True, "settings": [], "extra": 1}, 422, "validation_failed"),
        ([1, 2], 422, "validation_failed"),
    ],
)
async def test_put_config_refuses_wrong_shapes(api: Api, body: Any, status: int, code: str) -> None:
    answer = await api.call("PUT", config_path(TWILIO, B), json_body=body)
    assert (answer.status, answer.body["error"]) == (status, code)


async def test_malformed_json_wrong_type_and_oversized_bodies(api: Api) -> None:
    path = config_path(TWILIO, B)
    json_type = {"Content-Type": "application/json"}
    malformed = await api.call("PUT", path, data=b"{not json", headers=json_type)
    assert (malformed.status, malformed.body["error"]) == (400, "malformed_json")
    text = await api.call("PUT", path, data=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status == 415
    huge = b'{"enabled": true, "settings": {"x": "' + b"a" * 2_000_000 + b'"}}'
    too_big = await api.call("PUT", path, data=io.BytesIO(huge), headers=json_type)
    assert (too_big.status, too_big.body["error"]) == (413, "payload_too_large")


async def test_unknown_plugin_is_404(api: Api) -> None:
    answer = await api.call("GET", config_path("no.such.plugin", A))
    assert (answer.status, answer.body["error"]) == (404, "plugin_not_found")
    put = await api.call(
        "PUT", config_path("no.such.plugin", A), json_body={"enabled": False, "settings": {}}
    )
    assert put.status == 404


async def test_a_malformed_tenant_id_is_refused(api: Api) -> None:
    answer = await api.call("GET", config_path(TWILIO, "..%2Fetc"))
    assert answer.status == 422


async def test_if_match_gives_optimistic_concurrency(api: Api) -> None:
    first = await put_twilio(api, "tenant-etag")
    etag = first.headers["ETag"]
    ok = await put_twilio(api, "tenant-etag", from_number="+15550002222", **{})
    assert ok.status == 200  # no If-Match: last writer wins
    stale = await api.call(
        "PUT",
        config_path(TWILIO, "tenant-etag"),
        json_body={"enabled": True, "settings": {**TWILIO_SETTINGS, "auth_token": "***"}},
        headers={"If-Match": etag},
    )
    assert (stale.status, stale.body["error"]) == (412, "precondition_failed")
    assert stale.headers["ETag"] == ok.headers["ETag"]
    fresh = await api.call(
        "PUT",
        config_path(TWILIO, "tenant-etag"),
        json_body={"enabled": False, "settings": {**TWILIO_SETTINGS, "auth_token": "***"}},
        headers={"If-Match": ok.headers["ETag"]},
    )
    assert fresh.status == 200 and fresh.body["workers"] == "stopped"


async def test_concurrent_conditional_writes_let_exactly_one_win(api: Api) -> None:
    etag = (await put_twilio(api, "tenant-race")).headers["ETag"]
    bodies = [
        {"enabled": False, "settings": {**TWILIO_SETTINGS, "from_number": f"+1555000{i:04d}"}}
        for i in range(5)
    ]
    answers = await asyncio.gather(
        *(
            api.call(
                "PUT", config_path(TWILIO, "tenant-race"), json_body=b, headers={"If-Match": etag}
            )
            for b in bodies
        )
    )
    assert sorted(a.status for a in answers) == [200, 412, 412, 412, 412]


# -- activation, schemas, registry ---------------------------------------------------------


async def test_activate_and_deactivate_per_tenant(api: Api) -> None:
    config = {"enabled": False, "settings": {"api_key": "k" * 8, "api_secret": "s" * 8}}
    assert (await api.call("PUT", config_path(PHAXIO, B), json_body=config)).status == 200
    on = await api.call(
        "POST", f"/api/v1/admin/plugins/{PHAXIO}/activate", json_body={"tenant_id": B}
    )
    assert on.status == 200 and on.body["workers"] in ("started", "starting")
    assert api.service.host.supervisor.spec_of(ActivationKey(B, PHAXIO)) is not None
    schemas = await api.call("GET", f"/api/v1/tenants/{B}/plugins/active-schemas")
    assert list(schemas.body["plugins"]) == [PHAXIO]
    assert (
        "api_key"
        in schemas.body["settings_schema"]["properties"]["plugins"]["properties"][PHAXIO][
            "properties"
        ]
    )
    off = await api.call(
        "POST", f"/api/v1/admin/plugins/{PHAXIO}/deactivate", json_body={"tenant_id": B}
    )
    assert off.status == 200 and off.body["workers"] == "stopped"
    assert api.service.host.supervisor.spec_of(ActivationKey(B, PHAXIO)) is None
    kept = await api.service.store.plugin_config(B, PHAXIO)
    assert kept["api_key"] == "k" * 8  # settings survive deactivation


async def test_activation_with_settings_the_schema_refuses_is_422(api: Api) -> None:
    answer = await api.call(
        "POST", f"/api/v1/admin/plugins/{PHAXIO}/activate", json_body={"tenant_id": "tenant-bare"}
    )
    assert answer.status == 422
    assert {d["path"] for d in answer.body["details"]} == {
        "$.settings.api_key",
        "$.settings.api_secret",
    }


async def test_registry_is_served_and_searchable(api: Api) -> None:
    everything = await api.call("GET", "/plugin-registry")
    ids = [p["id"] for p in everything.body["providers"]]
    assert {TWILIO, PHAXIO} <= set(ids)
    fax = await api.call("GET", "/plugin-registry?q=FAX")
    assert [p["id"] for p in fax.body["providers"]] == ["dev.corral.http-fax-example", PHAXIO]
    assert (await api.call("GET", "/plugin-registry", key=None)).status == 401


async def test_feature_flag_off_hides_plugin_routes(api: Api) -> None:
    def turn(on: bool) -> Any:
        def change(doc: ConfigDocument) -> ConfigDocument:
            doc.features.v3_plugins = on
            return doc

        return change

    await api.service.store.update(turn(False))
    try:
        for path in ("/plugins", "/plugin-registry", config_path(TWILIO, A)):
            answer = await api.call("GET", path)
            assert (answer.status, answer.body["error"]) == (404, "feature_disabled")
        assert (await api.call("GET", "/api/v1/workers")).status == 200
    finally:
        await api.service.store.update(turn(True))
    assert (await api.call("GET", "/plugins")).status == 200


# -- workers ----------------------------------------------------------------------------------


async def test_worker_restart_and_circuit_reset(api: Api) -> None:
    await put_twilio(api, "tenant-w")
    worker_id = f"tenant-w:{TWILIO}:0"
    listed = await api.call("GET", "/api/v1/workers")
    pid = next(w["pid"] for w in listed.body["workers"] if w["id"] == worker_id)
    restarted = await api.call("POST", f"/api/v1/workers/{worker_id}/restart")
    assert restarted.status == 200
    assert restarted.body["workers"][0]["pid"] not in (None, pid)
    reset = await api.call("POST", f"/api/v1/workers/tenant-w:{TWILIO}/reset-circuit")
    assert reset.status == 200 and reset.body["action"] == "reset_circuit"
    missing = await api.call("POST", "/api/v1/workers/nobody:nothing:0/restart")
    assert missing.status == 404


# -- install and uninstall --------------------------------------------------------------------


async def test_install_by_upload_activate_and_uninstall(api: Api) -> None:
    installed = await api.call("POST", "/api/v1/admin/plugins", data=api.upload(api.demo_zip))
    assert installed.status == 201, installed.text
    assert installed.body["id"] == DEMO and DEMO in api.service.host.plugins
    on = await api.call("POST", f"/api/v1/admin/plugins/{DEMO}/activate", json_body={})
    assert on.status == 200 and on.body["tenant_id"] == "global"
    refused = await api.call("DELETE", f"/api/v1/admin/plugins/{DEMO}")
    assert (refused.status, refused.body["error"]) == (409, "plugin_in_use")
    gone = await api.call("DELETE", f"/api/v1/admin/plugins/{DEMO}?force=true")
    assert gone.status == 200 and gone.body["deactivated_for"] == ["global"]
    assert DEMO not in api.service.host.plugins
    assert api.service.host.supervisor.spec_of(ActivationKey("global", DEMO)) is None
    again = await api.call("DELETE", f"/api/v1/admin/plugins/{DEMO}")
    assert (again.status, again.body["error"]) == (404, "not_installed")


async def test_install_by_server_path_and_refusals(api: Api) -> None:
    by_path = await api.call("POST", "/api/v1/admin/plugins", json_body={"path": str(api.demo_dir)})
    assert by_path.status == 201 and by_path.body["id"] == DEMO
    assert (await api.call("DELETE", f"/api/v1/admin/plugins/{DEMO}")).status == 200
    unknown = api.state / "other.zip"
    unknown.write_bytes(api.demo_zip.read_bytes() + b"\0")
    not_listed = await api.call("POST", "/api/v1/admin/plugins", data=api.upload(unknown))
    assert (not_listed.status, not_listed.body["error"]) == (422, "checksum_missing")
    remote = await api.call(
        "POST", "/api/v1/admin/plugins", json_body={"url": "https://example.com/x.zip"}
    )
    assert (remote.status, remote.body["error"]) == (403, "remote_install_disabled")
    both = await api.call("POST", "/api/v1/admin/plugins", json_body={"path": "a", "url": "b"})
    assert both.status == 422


# -- keys -------------------------------------------------------------------------------------


async def test_keys_are_shown_once_hashed_at_rest_and_revoked_at_once(api: Api) -> None:
    created = await api.call(
        "POST",
        "/api/v1/admin/keys",
        json_body={"name": "reader", "scopes": ["admin:plugins:read"], "tenant_id": A},
    )
    assert created.status == 201
    key, key_id = created.body["key"], created.body["record"]["id"]
    assert key not in api.service.store.path.read_text()
    listed = await api.call("GET", "/api/v1/admin/keys")
    assert key_id in {k["id"] for k in listed.body["keys"]} and key not in listed.text
    assert (await api.call("GET", "/plugins", key=key)).body["tenant_id"] == A
    assert (await api.call("GET", f"/plugins?tenant_id={B}", key=key)).status == 403
    revoked = await api.call("DELETE", f"/api/v1/admin/keys/{key_id}")
    assert revoked.status == 200 and revoked.body["revoked_at"]
    assert (await api.call("GET", "/plugins", key=key)).status == 401


async def test_a_tenant_key_cannot_grant_more_than_it_holds(api: Api) -> None:
    manager = await api.new_key(frozenset({Scope.KEYS_MANAGE}), A)
    wider = await api.call(
        "POST",
        "/api/v1/admin/keys",
        key=manager,
        json_body={"name": "x", "scopes": ["admin:plugins:write"], "tenant_id": A},
    )
    assert wider.status == 403
    elsewhere = await api.call(
        "POST",
        "/api/v1/admin/keys",
        key=manager,
        json_body={"name": "x", "scopes": ["keys:manage"], "tenant_id": B},
    )
    assert elsewhere.status == 403


# -- audit and secrets -------------------------------------------------------------------------


async def test_every_act_is_audited_and_the_chain_verifies(api: Api) -> None:
    await put_twilio(api, "tenant-audit")
    reader = await api.new_key(frozenset({Scope.PLUGINS_READ}))
    await api.call("PUT", config_path(TWILIO, "tenant-audit"), key=reader, json_body={})
    path = api.service.audit.settings.path
    events = [json.loads(line) for line in path.read_text().splitlines()]
    puts = [e for e in events if e["action"] == "plugin.config.put"]
    assert [e["outcome"] for e in puts][-2:] == ["success", "denied"]
    assert puts[-2]["target"] == TWILIO and puts[-2]["tenant"] == "tenant-audit"
    assert puts[-2]["request_id"] and puts[-1]["details"]["status"] == 403
    assert {"host.start", "plugin.activate", "key.create"} <= {e["action"] for e in events}
    assert SECRET not in path.read_text()
    assert verify(path).is_intact


async def test_no_secret_reaches_any_answer_or_log_line(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    planted = "planted-" + secrets.token_hex(8)
    caplog.set_level(logging.DEBUG)
    await put_twilio(api, "tenant-s", auth_token=planted)
    await put_twilio(api, "tenant-s", auth_token=planted, account_sid=planted)  # 422
    await api.call("PUT", config_path(TWILIO, "tenant-s") + f"&x={planted}", json_body=planted)
    await api.call("GET", f"/plugins?tenant_id={planted}", key=planted)
    await api.call("GET", "/plugins", headers={"Authorization": f"Bearer {planted}"}, key=None)
    await api.call("GET", config_path(TWILIO, "tenant-s"))
    await api.call("GET", "/plugins?tenant_id=tenant-s")
    await api.call("GET", "/api/v1/workers")
    answers = "".join(api.answers)
    assert SECRET not in answers and planted not in answers
    assert api.key not in caplog.text and planted not in caplog.text and SECRET not in caplog.text


# -- limits -------------------------------------------------------------------------------------


async def test_write_budget_answers_429_with_retry_after() -> None:
    limits = RateLimitSettings(
        reads_per_minute=1000, writes_per_minute=2, failed_auth_per_minute=1000
    )
    async with running_api(rate_limits=limits) as api:
        answers = [
            await api.call("POST", f"/api/v1/admin/plugins/{DEMO}/deactivate", json_body={})
            for _ in range(3)
        ]
        assert [a.status for a in answers][:2] != [429, 429]
        assert answers[2].status == 429 and int(answers[2].headers["Retry-After"]) >= 1
        assert (await api.call("GET", "/plugins")).status == 200  # reads have their own budget


async def test_config_writes_under_continuous_calls_drop_none(api: Api) -> None:
    await put_twilio(api, "tenant-live")
    key = ActivationKey("tenant-live", TWILIO)
    message = SendNotification(recipient="+15550002222", body="hello")
    stop, answered = asyncio.Event(), [0]

    async def caller() -> None:
        while not stop.is_set():
            try:
                await api.service.host.supervisor.call(
                    key, "notification_channel.send", message, timeout_s=10
                )
            except RemoteError:
                pass  # the worker answered (the provider is unreachable from here): not dropped
            answered[0] += 1

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    for number in ("+15550003333", "+15550004444", "+15550005555"):
        switched = await put_twilio(api, "tenant-live", from_number=number)
        assert switched.body["workers"] == "switched"
    stop.set()
    await asyncio.gather(*callers)  # a dropped call raises something other than RemoteError
    assert answered[0] > 0
