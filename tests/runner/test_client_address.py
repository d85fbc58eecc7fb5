"""The client's address behind trusted proxies: the failed-login budget and webhook handlers."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request

from runner.ratelimit import RateLimitSettings
from runner.webhook_url import WebhookUrlSettings, client_address
from tests.runner.api_harness import HOOKS, running_api

PROXY = WebhookUrlSettings.from_env({"CORRAL_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"})


def address(headers: dict[str, str], settings: WebhookUrlSettings = PROXY) -> str | None:
    request = make_mocked_request("GET", "/", headers=headers).clone(remote="127.0.0.1")
    return client_address(request, settings)


def test_the_peer_is_the_client_unless_it_is_a_trusted_proxy() -> None:
    untrusted = WebhookUrlSettings.from_env({})
    assert address({"X-Forwarded-For": "203.0.113.9"}, untrusted) == "127.0.0.1"
    assert address({}) == "127.0.0.1"


def test_the_chain_is_read_from_the_nearest_hop_skipping_trusted_proxies() -> None:
    # A client may send its own X-Forwarded-For: only what trusted proxies appended counts.
    chain = "198.51.100.7, 203.0.113.9, 10.1.2.3"
    assert address({"X-Forwarded-For": chain}) == "203.0.113.9"
    assert address({"X-Forwarded-For": "10.0.0.1, 10.0.0.2"}) == "127.0.0.1"
    assert address({"X-Forwarded-For": "not-an-ip, 203.0.113.9"}) == "203.0.113.9"
    assert address({"X-Forwarded-For": "203.0.113.9, garbage"}) == "127.0.0.1"


def test_forwarded_for_values_with_ports_and_brackets() -> None:
    forwarded = WebhookUrlSettings.from_env(
        {"CORRAL_TRUSTED_PROXIES": "127.0.0.1", "CORRAL_PROXY_HEADERS": "forwarded"}
    )
    header = 'for=192.0.2.60;proto=https, for="[2001:db8::17]:4711"'
    assert address({"Forwarded": header}, forwarded) == "2001:db8::17"
    assert address({"Forwarded": "for=192.0.2.60:8080"}, forwarded) == "192.0.2.60"
    assert address({"Forwarded": "for=_hidden"}, forwarded) == "127.0.0.1"


@pytest.mark.integration
async def test_one_guesser_behind_the_proxy_does_not_lock_out_everyone() -> None:
    limits = RateLimitSettings(
        reads_per_minute=1000, writes_per_minute=1000, failed_auth_per_minute=3
    )
    environ = {"CORRAL_TRUSTED_PROXIES": "127.0.0.1"}
    async with running_api(environ=environ, rate_limits=limits) as api:
        guesser = {"X-Forwarded-For": "203.0.113.66"}
        statuses = [
            (await api.call("GET", "/plugins", key="wrong" * 8, headers=guesser)).status
            for _ in range(5)
        ]
        assert statuses[:3] == [401, 401, 401] and statuses[-1] == 429
        operator = await api.call("GET", "/plugins", headers={"X-Forwarded-For": "198.51.100.1"})
        assert operator.status == 200, operator.text
        # The webhook handler is told the forwarded client, not the proxy.
        installed = await api.call(
            "POST", "/api/v1/admin/plugins", json_body={"path": str(api.hooks_dir)}
        )
        assert installed.status == 201, installed.text
        answer = await api.call(
            "PUT",
            f"/plugins/{HOOKS}/config?tenant_id=t1",
            json_body={"enabled": True, "settings": {"secret": "s" * 16}},
        )
        assert answer.status == 200, answer.text
        hook = await api.call(
            "POST",
            "/webhook/hooks/t1/open",
            key=None,
            data=b"{}",
            headers=guesser,
            check_documented=False,
        )
        assert hook.status == 200, hook.text
        assert json.loads(hook.text)["client_address"] == "203.0.113.66"
