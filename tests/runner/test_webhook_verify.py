"""Core webhook verification: every scheme's good and bad signatures, timestamps, replays, the
bounded replay cache, the HIPAA route policy and the public URL behind a reverse proxy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from protocol.manifest import WebhookRoute, load_manifest
from runner.replay_cache import MemoryReplayCache, ReplayCache
from runner.webhook_errors import RoutePolicyError, SignatureError, SignatureReason
from runner.webhook_schemes import SCHEMES, SignedRequest
from runner.webhook_url import (
    WebhookUrlSettings,
    WebhookUrlSettingsError,
    external_url,
    request_external_url,
)
from runner.webhook_verify import OFFLOAD_BODY_BYTES, Verified, check_route_policy, verify

PLUGINS = Path(__file__).parents[2] / "plugins"
NOW = 1_700_000_000.0
SECRET = "s3cret-value-for-tests"
URL = "https://hooks.example.com/webhook/acme/t1/hook"
BODY = b'{"event":"fax.sent","id":42}'


def route(verify_as: str, **extra: Any) -> WebhookRoute:
    fields: dict[str, Any] = {"route_id": "hook", "path": "/hook", "verify": verify_as}
    if verify_as not in ("plugin", "none"):
        fields["secret_field"] = "signing_secret"
    return WebhookRoute(**(fields | extra))


async def check(
    r: WebhookRoute,
    headers: Mapping[str, str],
    body: bytes = BODY,
    *,
    secret: str | None = SECRET,
    url: str = URL,
    now: float = NOW,
    replay: ReplayCache | None = None,
    tenant_id: str = "t1",
    form: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
) -> Verified:
    return await verify(
        r,
        secret,
        method="POST",
        url=url,
        headers=headers,
        body=body,
        form=form,
        now=now,
        replay=replay if replay is not None else MemoryReplayCache(),
        tenant_id=tenant_id,
        plugin_id="dev.corral.acme",
    )


async def refused(r: WebhookRoute, headers: Mapping[str, str], **kwargs: Any) -> SignatureReason:
    with pytest.raises(SignatureError) as caught:
        await check(r, headers, **kwargs)
    assert caught.value.route_id == r.route_id
    return caught.value.reason


def mac(data: bytes, digest: Any = hashlib.sha256, key: bytes = SECRET.encode()) -> bytes:
    return hmac.new(key, data, digest).digest()


# ------------------------------------------------------------------ hmac-sha256 / hmac-sha1


@pytest.mark.parametrize(
    "value",
    [
        mac(BODY).hex(),
        mac(BODY).hex().upper(),
        "sha256=" + mac(BODY).hex(),
        "SHA256=" + mac(BODY).hex(),
        f"  {mac(BODY).hex()}  ",
    ],
    ids=["hex", "upper-hex", "github-prefix", "upper-prefix", "padded-with-spaces"],
)
async def test_hmac_sha256_hex_signature_verifies(value: str) -> None:
    result = await check(route("hmac-sha256"), {"X-Signature": value})
    assert result == Verified("hmac-sha256", verified=True)


@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(mac(BODY)).decode(),
        base64.b64encode(mac(BODY)).decode().rstrip("="),
        base64.urlsafe_b64encode(mac(BODY)).decode(),
        "sha256=" + base64.b64encode(mac(BODY)).decode(),
    ],
    ids=["standard", "unpadded", "urlsafe", "prefixed"],
)
async def test_hmac_sha256_base64_signature_verifies(value: str) -> None:
    r = route("hmac-sha256", signature_encoding="base64")
    assert (await check(r, {"X-Signature": value})).verified


async def test_hmac_sha1_verifies_with_and_without_its_prefix() -> None:
    digest = mac(BODY, hashlib.sha1).hex()
    r = route("hmac-sha1", signature_header="X-Hub-Signature")
    assert (await check(r, {"X-Hub-Signature": digest})).verified
    assert (await check(r, {"x-hub-signature": "sha1=" + digest})).verified


async def test_hmac_header_lookup_is_case_insensitive_in_a_plain_dict_and_a_multidict() -> None:
    r = route("hmac-sha256", signature_header="X-Custom-Sig")
    assert (await check(r, {"x-custom-sig": mac(BODY).hex()})).verified
    assert (await check(r, CIMultiDict({"X-CUSTOM-SIG": mac(BODY).hex()}))).verified


@pytest.mark.parametrize(
    ("verify_as", "value", "reason"),
    [
        ("hmac-sha256", mac(b"other body").hex(), SignatureReason.BAD_SIGNATURE),
        ("hmac-sha256", mac(BODY, key=b"wrong").hex(), SignatureReason.BAD_SIGNATURE),
        ("hmac-sha256", mac(BODY, hashlib.sha1).hex(), SignatureReason.MALFORMED_SIGNATURE),
        ("hmac-sha256", "sha1=" + mac(BODY).hex(), SignatureReason.MALFORMED_SIGNATURE),
        ("hmac-sha256", "zz" * 32, SignatureReason.MALFORMED_SIGNATURE),
        ("hmac-sha256", mac(BODY).hex()[:-2], SignatureReason.MALFORMED_SIGNATURE),
        ("hmac-sha256", " ".join(mac(BODY).hex()), SignatureReason.MALFORMED_SIGNATURE),
        ("hmac-sha1", mac(BODY).hex(), SignatureReason.MALFORMED_SIGNATURE),
        ("hmac-sha1", mac(b"x", hashlib.sha1).hex(), SignatureReason.BAD_SIGNATURE),
    ],
)
async def test_hmac_refuses_wrong_or_malformed_signatures(
    verify_as: str, value: str, reason: SignatureReason
) -> None:
    assert await refused(route(verify_as), {"X-Signature": value}) is reason


async def test_hmac_base64_route_refuses_a_hex_signature_as_malformed() -> None:
    r = route("hmac-sha256", signature_encoding="base64")
    assert await refused(r, {"X-Signature": mac(BODY).hex()}) is SignatureReason.MALFORMED_SIGNATURE


@pytest.mark.parametrize("headers", [{}, {"X-Signature": ""}, {"X-Other": "abc"}])
async def test_a_missing_signature_header_is_missing_signature(headers: dict[str, str]) -> None:
    assert await refused(route("hmac-sha256"), headers) is SignatureReason.MISSING_SIGNATURE


async def test_a_repeated_signature_header_is_refused_even_if_one_copy_is_right() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("X-Signature", mac(BODY).hex())
    headers.add("X-Signature", "00" * 32)
    assert await refused(route("hmac-sha256"), headers) is SignatureReason.MALFORMED_SIGNATURE


@pytest.mark.parametrize("secret", [None, ""])
async def test_no_configured_secret_is_missing_secret(secret: str | None) -> None:
    headers = {"X-Signature": mac(BODY).hex()}
    reason = await refused(route("hmac-sha256"), headers, secret=secret)
    assert reason is SignatureReason.MISSING_SECRET


async def test_a_large_body_is_verified_off_the_loop_with_the_same_answer() -> None:
    body = b"x" * (OFFLOAD_BODY_BYTES + 1)
    assert (await check(route("hmac-sha256"), {"X-Signature": mac(body).hex()}, body)).verified
    bad = {"X-Signature": mac(body + b"!").hex()}
    assert await refused(route("hmac-sha256"), bad, body=body) is SignatureReason.BAD_SIGNATURE


async def test_the_shipped_phaxio_route_verifies_a_body_hmac_sha256_in_x_phaxio_signature() -> None:
    # What the manifest declares (verify = "hmac-sha256", hex): a MAC of the raw body. Phaxio's
    # own scheme (HMAC-SHA1 over URL, sorted fields and file digests) is not this; see docs.
    (r,) = load_manifest(PLUGINS / "phaxio_fax").webhook
    body = urlencode({"success": "true", "fax": json.dumps({"id": 1})}).encode()
    headers = {"X-Phaxio-Signature": mac(body).hex()}
    assert (await check(r, headers, body)).verified
    assert await refused(r, {"X-Phaxio-Signature": mac(BODY).hex()}, body=body) == "bad_signature"


# ------------------------------------------------------------------ twilio

TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def twilio_sig(url: str, params: Mapping[str, str], token: str = SECRET) -> str:
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(mac(data.encode(), hashlib.sha1, token.encode())).decode()


async def test_twilio_documented_example_verifies() -> None:
    # Twilio's worked example (auth token 12345). These parameters give 0/KCTR6...; the value
    # GvWf1cFY... belongs to the newer docs' example, whose Caller and From are +14158675310.
    r = route("twilio")
    headers = {"X-Twilio-Signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="}
    assert (
        await check(r, headers, b"", secret="12345", url=TWILIO_URL, form=TWILIO_PARAMS)
    ).verified
    newer = TWILIO_PARAMS | {"Caller": "+14158675310", "From": "+14158675310"}
    headers = {"X-Twilio-Signature": "GvWf1cFY/Q7PnoempGyD5oXAezc="}
    assert (await check(r, headers, b"", secret="12345", url=TWILIO_URL, form=newer)).verified


async def test_twilio_parses_a_form_body_itself_in_any_field_order() -> None:
    body = urlencode(sorted(TWILIO_PARAMS.items(), reverse=True)).encode()
    headers = FORM | {"X-Twilio-Signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="}
    result = await check(route("twilio"), headers, body, secret="12345", url=TWILIO_URL)
    assert result == Verified("twilio", verified=True)


async def test_twilio_accepts_form_pairs_with_repeated_names() -> None:
    pairs = [("To", "+1"), ("Media", "b"), ("Media", "a")]
    signed = TWILIO_URL + "Mediaa" + "Mediab" + "To+1"
    sig = base64.b64encode(mac(signed.encode(), hashlib.sha1)).decode()
    assert (
        await check(route("twilio"), {"X-Twilio-Signature": sig}, b"", url=TWILIO_URL, form=pairs)
    ).verified


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://mycompany.com:443/myapp.php?foo=1", "https://mycompany.com/myapp.php?foo=1"),
        ("https://mycompany.com/myapp.php?foo=1", "https://mycompany.com:443/myapp.php?foo=1"),
    ],
)
async def test_twilio_accepts_the_url_with_or_without_its_default_port(
    signed_url: str, request_url: str
) -> None:
    headers = {"X-Twilio-Signature": twilio_sig(signed_url, TWILIO_PARAMS)}
    r = route("twilio")
    assert (await check(r, headers, b"", url=request_url, form=TWILIO_PARAMS)).verified


@pytest.mark.parametrize(
    ("url", "params"),
    [
        (TWILIO_URL, TWILIO_PARAMS | {"Digits": "9999"}),
        (TWILIO_URL, TWILIO_PARAMS | {"Extra": "1"}),
        (TWILIO_URL.replace("https", "http"), TWILIO_PARAMS),
        (TWILIO_URL.replace("foo=1", "foo=2"), TWILIO_PARAMS),
        ("https://evil.example/myapp.php?foo=1&bar=2", TWILIO_PARAMS),
    ],
    ids=["changed-field", "added-field", "http", "changed-query", "other-host"],
)
async def test_twilio_refuses_a_changed_url_or_field(url: str, params: dict[str, str]) -> None:
    headers = {"X-Twilio-Signature": twilio_sig(TWILIO_URL, TWILIO_PARAMS)}
    reason = await refused(route("twilio"), headers, body=b"", url=url, form=params)
    assert reason is SignatureReason.BAD_SIGNATURE


async def test_twilio_json_body_is_covered_by_body_sha256() -> None:
    url = f"https://example.com/hook?bodySHA256={hashlib.sha256(BODY).hexdigest()}"
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": twilio_sig(url, {})}
    assert (await check(route("twilio"), headers, BODY, url=url)).verified
    reason = await refused(route("twilio"), headers, body=BODY + b" ", url=url)
    assert reason is SignatureReason.BAD_SIGNATURE


async def test_twilio_refuses_a_non_form_body_its_signature_would_not_cover() -> None:
    url = "https://example.com/hook"
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": twilio_sig(url, {})}
    reason = await refused(route("twilio"), headers, body=BODY, url=url)
    assert reason is SignatureReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, b"a=1", SignatureReason.MISSING_SIGNATURE),
        ({"X-Twilio-Signature": "not base64!"}, b"a=1", SignatureReason.MALFORMED_SIGNATURE),
        ({"X-Twilio-Signature": "AAAA"}, b"a=1", SignatureReason.MALFORMED_SIGNATURE),
        ({"X-Twilio-Signature": "A" * 27 + "="}, b"a=%FF", SignatureReason.BAD_SIGNATURE),
    ],
    ids=["missing", "not-base64", "too-short", "body-not-utf8"],
)
async def test_twilio_refuses_missing_malformed_and_undecodable_requests(
    headers: dict[str, str], body: bytes, reason: SignatureReason
) -> None:
    assert await refused(route("twilio"), FORM | headers, body=body) is reason


async def test_the_shipped_twilio_route_verifies_a_status_callback() -> None:
    (r,) = load_manifest(PLUGINS / "twilio_sms").webhook
    url = "https://hooks.example.com/webhook/twilio/t1/sms-status"
    fields = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+15551234567"}
    headers = FORM | {"X-Twilio-Signature": twilio_sig(url, fields)}
    assert (await check(r, headers, urlencode(fields).encode(), url=url)).verified


# ------------------------------------------------------------------ stripe


def stripe_header(t: int, body: bytes = BODY, *, extra: str = "") -> str:
    return f"t={t},v1={mac(f'{t}.'.encode() + body).hex()}{extra}"


async def test_stripe_signature_verifies_and_reports_its_timestamp() -> None:
    t = int(NOW) - 10
    result = await check(route("stripe"), {"Stripe-Signature": stripe_header(t)})
    assert result == Verified("stripe", verified=True, timestamp=t)


async def test_stripe_accepts_any_matching_v1_and_ignores_other_schemes() -> None:
    t = int(NOW)
    value = f"t={t},v0={'00' * 32},v1={'11' * 32},v1={mac(f'{t}.'.encode() + BODY).hex()}"
    assert (await check(route("stripe"), {"Stripe-Signature": value})).verified


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (stripe_header(int(NOW), b"tampered"), SignatureReason.BAD_SIGNATURE),
        (f"t={int(NOW)},v1={'ab' * 32}", SignatureReason.BAD_SIGNATURE),
        (stripe_header(int(NOW)).replace(f"t={int(NOW)}", f"t={int(NOW) + 1}"), "bad_signature"),
        (f"v1={'ab' * 32}", SignatureReason.MALFORMED_SIGNATURE),
        (f"t={int(NOW)}", SignatureReason.MALFORMED_SIGNATURE),
        (f"t={int(NOW)},v1=xyz", SignatureReason.MALFORMED_SIGNATURE),
        (f"t=-5,v1={'ab' * 32}", SignatureReason.MALFORMED_SIGNATURE),
        (f"t=1,t=2,v1={'ab' * 32}", SignatureReason.MALFORMED_SIGNATURE),
        ("garbage", SignatureReason.MALFORMED_SIGNATURE),
        (stripe_header(int(NOW) - 301), SignatureReason.STALE_TIMESTAMP),
        (stripe_header(int(NOW) + 301), SignatureReason.STALE_TIMESTAMP),
    ],
    ids=[
        "tampered-body",
        "wrong-mac",
        "moved-timestamp",
        "no-t",
        "no-v1",
        "non-hex-v1",
        "negative-t",
        "two-t",
        "garbage",
        "stale",
        "future",
    ],
)
async def test_stripe_refuses_bad_malformed_and_untimely_signatures(
    value: str, reason: SignatureReason
) -> None:
    assert await refused(route("stripe"), {"Stripe-Signature": value}) == reason


async def test_stripe_tolerance_comes_from_the_route() -> None:
    r = route("stripe", tolerance_seconds=30)
    assert (await check(r, {"Stripe-Signature": stripe_header(int(NOW) - 30)})).verified
    reason = await refused(r, {"Stripe-Signature": stripe_header(int(NOW) - 31)})
    assert reason is SignatureReason.STALE_TIMESTAMP


async def test_stripe_replay_is_refused_within_the_window_and_per_tenant() -> None:
    cache = MemoryReplayCache()
    headers = {"Stripe-Signature": stripe_header(int(NOW))}
    assert (await check(route("stripe"), headers, replay=cache)).verified
    assert await refused(route("stripe"), headers, replay=cache) is SignatureReason.REPLAYED
    assert (await check(route("stripe"), headers, replay=cache, tenant_id="t2")).verified
    other_body = {"Stripe-Signature": stripe_header(int(NOW), b"{}")}
    assert (await check(route("stripe"), other_body, b"{}", replay=cache)).verified


async def test_forged_or_stale_requests_never_enter_the_replay_cache() -> None:
    cache = MemoryReplayCache()
    await refused(
        route("stripe"), {"Stripe-Signature": f"t={int(NOW)},v1={'ab' * 32}"}, replay=cache
    )
    await refused(
        route("stripe"), {"Stripe-Signature": stripe_header(int(NOW) - 999)}, replay=cache
    )
    assert len(cache) == 0


# ------------------------------------------------------------------ standard webhooks

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def standard_headers(
    msg_id: str,
    ts: int,
    body: bytes = BODY,
    *,
    key: bytes = SECRET.encode(),
    prefix: str = "webhook-",
) -> dict[str, str]:
    sig = base64.b64encode(mac(f"{msg_id}.{ts}.".encode() + body, key=key)).decode()
    return {f"{prefix}id": msg_id, f"{prefix}timestamp": str(ts), f"{prefix}signature": f"v1,{sig}"}


async def test_standard_webhooks_spec_vector_verifies() -> None:
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": SPEC_SIG,
    }
    result = await check(
        route("standard-webhooks"), headers, SPEC_BODY, secret=SPEC_SECRET, now=SPEC_TS
    )
    assert result == Verified("standard-webhooks", True, timestamp=SPEC_TS, message_id=SPEC_ID)


async def test_standard_webhooks_uses_a_non_whsec_secret_as_raw_bytes() -> None:
    headers = standard_headers("msg_1", int(NOW))
    assert (await check(route("standard-webhooks"), headers)).verified


async def test_standard_webhooks_accepts_any_v1_among_several_and_svix_headers() -> None:
    headers = standard_headers("msg_1", int(NOW), prefix="svix-")
    wrong = base64.b64encode(b"\0" * 32).decode()
    headers["svix-signature"] = f"v1a,abc v1,{wrong} v1,!!! {headers['svix-signature']}"
    assert (await check(route("standard-webhooks"), headers)).verified


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-id": "msg_2"}, SignatureReason.BAD_SIGNATURE),
        ({"webhook-timestamp": str(int(NOW) + 1)}, SignatureReason.BAD_SIGNATURE),
        ({"webhook-signature": "v1," + base64.b64encode(b"\1" * 32).decode()}, "bad_signature"),
        ({"webhook-signature": "v1a,abcdef"}, SignatureReason.MALFORMED_SIGNATURE),
        ({"webhook-signature": "v1,not-base64!"}, SignatureReason.MALFORMED_SIGNATURE),
        ({"webhook-timestamp": "soon"}, SignatureReason.MALFORMED_SIGNATURE),
        ({"webhook-id": "m" * 257}, SignatureReason.MALFORMED_SIGNATURE),
        ({"webhook-id": ""}, SignatureReason.MISSING_SIGNATURE),
        ({"webhook-timestamp": ""}, SignatureReason.MISSING_SIGNATURE),
        ({"webhook-signature": ""}, SignatureReason.MISSING_SIGNATURE),
    ],
)
async def test_standard_webhooks_refuses_changed_or_malformed_headers(
    change: dict[str, str], reason: SignatureReason
) -> None:
    headers = standard_headers("msg_1", int(NOW)) | change
    assert await refused(route("standard-webhooks"), headers) == reason


@pytest.mark.parametrize("offset", [-301, 301])
async def test_standard_webhooks_refuses_stale_and_future_timestamps(offset: int) -> None:
    headers = standard_headers("msg_1", int(NOW) + offset)
    assert await refused(route("standard-webhooks"), headers) is SignatureReason.STALE_TIMESTAMP


async def test_standard_webhooks_replay_is_keyed_by_message_id() -> None:
    cache = MemoryReplayCache()
    r = route("standard-webhooks")
    assert (await check(r, standard_headers("msg_1", int(NOW)), replay=cache)).verified
    # The same delivery re-signed at a later time is still the same message.
    again = standard_headers("msg_1", int(NOW) + 5)
    assert await refused(r, again, replay=cache, now=NOW + 5) is SignatureReason.REPLAYED
    # Once the first one's window has passed, its id may be used again.
    later = standard_headers("msg_1", int(NOW) + 400)
    assert (await check(r, later, replay=cache, now=NOW + 400)).verified


@pytest.mark.parametrize("secret", ["whsec_!!!", "whsec_", "whsec_é"])
async def test_standard_webhooks_refuses_a_whsec_secret_that_is_not_base64(secret: str) -> None:
    headers = standard_headers("msg_1", int(NOW))
    reason = await refused(route("standard-webhooks"), headers, secret=secret)
    assert reason is SignatureReason.MISSING_SECRET


# ------------------------------------------------------------------ plugin / none, secrecy, policy


@pytest.mark.parametrize("verify_as", ["plugin", "none"])
async def test_plugin_and_none_pass_through_unverified(verify_as: str) -> None:
    result = await check(route(verify_as), {}, secret=None)
    assert result == Verified(verify_as, verified=False)  # type: ignore[arg-type]


async def test_refusals_never_quote_the_secret_or_the_signature() -> None:
    cases: list[tuple[WebhookRoute, dict[str, str]]] = [
        (route("hmac-sha256"), {"X-Signature": mac(b"x").hex()}),
        (route("hmac-sha256"), {"X-Signature": "sha1=" + mac(b"x").hex()}),
        (route("stripe"), {"Stripe-Signature": stripe_header(1)}),
        (route("stripe"), {"Stripe-Signature": f"t=1,v1={'cd' * 32}"}),
        (route("twilio"), FORM | {"X-Twilio-Signature": twilio_sig(URL, {"a": "2"})}),
        (route("standard-webhooks"), standard_headers("msg_1", 1)),
    ]
    for r, headers in cases:
        with pytest.raises(SignatureError) as caught:
            await check(r, headers, b"a=1")
        text = str(caught.value) + repr(caught.value.args)
        assert SECRET not in text
        for value in headers.values():
            for part in value.replace(",", " ").replace("=", " ").split():
                assert len(part) < 20 or part not in text


def test_hipaa_refuses_routes_without_verification() -> None:
    with pytest.raises(RoutePolicyError, match="hipaa") as caught:
        check_route_policy(route("none"), "hipaa")
    assert caught.value.route_id == "hook"
    check_route_policy(route("none"), "default")
    for scheme in ("plugin", "hmac-sha256", "hmac-sha1", "twilio", "stripe", "standard-webhooks"):
        check_route_policy(route(scheme), "hipaa")


# ------------------------------------------------------------------ random signatures (hypothesis)

SCHEME_ROUTES = {
    "hex": route("hmac-sha256"),
    "base64": route("hmac-sha256", signature_encoding="base64"),
    "sha1": route("hmac-sha1"),
}


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(sorted(SCHEME_ROUTES)),
    digest=st.binary(min_size=20, max_size=32),
    body=st.binary(max_size=256),
)
def test_random_body_signatures_never_verify(kind: str, digest: bytes, body: bytes) -> None:
    r = SCHEME_ROUTES[kind]
    encoded = digest.hex() if r.signature_encoding == "hex" else base64.b64encode(digest).decode()
    request = SignedRequest("POST", URL, {"X-Signature": encoded}, body, None)
    with pytest.raises(SignatureError):
        SCHEMES[r.verify](r, SECRET, request, NOW)


@settings(max_examples=200, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32), ts=st.integers(0, 10**12 - 1))
def test_random_stripe_and_standard_signatures_never_verify(digest: bytes, ts: int) -> None:
    stripe = SignedRequest(
        "POST", URL, {"Stripe-Signature": f"t={ts},v1={digest.hex()}"}, BODY, None
    )
    with pytest.raises(SignatureError) as caught:
        SCHEMES["stripe"](route("stripe"), SECRET, stripe, float(ts))
    assert caught.value.reason is SignatureReason.BAD_SIGNATURE
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
    standard = SignedRequest("POST", URL, headers, BODY, None)
    with pytest.raises(SignatureError) as caught:
        SCHEMES["standard-webhooks"](route("standard-webhooks"), SECRET, standard, float(ts))
    assert caught.value.reason is SignatureReason.BAD_SIGNATURE


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=120))
def test_arbitrary_header_text_is_refused_with_a_known_reason(value: str) -> None:
    cases = [
        ("hmac-sha256", {"X-Signature": value}),
        ("stripe", {"Stripe-Signature": value}),
        ("twilio", {"X-Twilio-Signature": value}),
        (
            "standard-webhooks",
            {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": value},
        ),
        (
            "standard-webhooks",
            {"webhook-id": value, "webhook-timestamp": value, "webhook-signature": "v1,AAAA"},
        ),
    ]
    for scheme, headers in cases:
        request = SignedRequest("POST", URL, headers, b"", None)
        with pytest.raises(SignatureError) as caught:
            SCHEMES[scheme](route(scheme), SECRET, request, NOW)
        assert caught.value.reason in set(SignatureReason)


# ------------------------------------------------------------------ replay cache


def key(nonce: str) -> tuple[str, str, str, str]:
    return ("t1", "dev.corral.acme", "hook", nonce)


async def test_replay_cache_refuses_a_live_key_and_forgets_an_expired_one() -> None:
    cache: ReplayCache = MemoryReplayCache()
    assert await cache.claim(key("a"), expires_at=NOW + 10, now=NOW)
    assert not await cache.claim(key("a"), expires_at=NOW + 20, now=NOW + 5)
    assert await cache.claim(key("a"), expires_at=NOW + 30, now=NOW + 10)


def test_replay_cache_stays_bounded_under_a_flood_of_ids() -> None:
    cache = MemoryReplayCache(max_entries=1000)
    for i in range(100_000):
        assert cache.claim_now(key(str(i)), expires_at=NOW + 300, now=NOW)
    assert len(cache) == 1000
    assert cache.evicted_live == 99_000
    assert not cache.claim_now(key("99999"), expires_at=NOW + 300, now=NOW)  # newest kept


def test_replay_cache_drops_expired_keys_before_evicting_live_ones() -> None:
    cache = MemoryReplayCache(max_entries=10)
    for i in range(10):
        cache.claim_now(key(f"old{i}"), expires_at=NOW + 1, now=NOW)
    for i in range(10):
        cache.claim_now(key(f"new{i}"), expires_at=NOW + 300, now=NOW + 2)
    assert len(cache) == 10
    assert cache.evicted_live == 0


def test_replay_cache_rejects_a_nonpositive_size() -> None:
    with pytest.raises(ValueError):
        MemoryReplayCache(max_entries=0)


# ------------------------------------------------------------------ public URL behind a proxy

PROXY = WebhookUrlSettings(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
INTERNAL = "http://corral:8080/webhook/acme/t1/hook?x=1"
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}


def test_without_settings_the_request_url_is_used_as_is() -> None:
    settings_ = WebhookUrlSettings()
    assert (
        external_url(INTERNAL + "#frag", FORWARDED, peer="10.0.0.1", settings=settings_) == INTERNAL
    )


def test_a_public_base_url_replaces_scheme_host_and_adds_its_path_prefix() -> None:
    settings_ = WebhookUrlSettings(public_base_url="https://hooks.example.com/corral/")
    got = external_url(
        INTERNAL, FORWARDED | {"X-Forwarded-Host": "evil"}, peer=None, settings=settings_
    )
    assert got == "https://hooks.example.com/corral/webhook/acme/t1/hook?x=1"


def test_a_trusted_proxy_supplies_scheme_and_host() -> None:
    got = external_url(INTERNAL, FORWARDED, peer="10.1.2.3", settings=PROXY)
    assert got == "https://hooks.example.com/webhook/acme/t1/hook?x=1"
    mapped = external_url(INTERNAL, FORWARDED, peer="::ffff:10.1.2.3", settings=PROXY)
    assert mapped == got


@pytest.mark.parametrize("peer", ["192.0.2.7", None, "", "not-an-ip", "2001:db8::1"])
def test_an_untrusted_peers_forwarding_headers_are_ignored(peer: str | None) -> None:
    assert external_url(INTERNAL, FORWARDED, peer=peer, settings=PROXY) == INTERNAL


def test_the_nearest_proxys_value_wins_and_junk_values_are_ignored() -> None:
    headers = {"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "a.example, b.example:8443"}
    got = external_url(INTERNAL, headers, peer="10.0.0.1", settings=PROXY)
    assert got == "https://b.example:8443/webhook/acme/t1/hook?x=1"
    junk = {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil.example/path@x"}
    assert external_url(INTERNAL, junk, peer="10.0.0.1", settings=PROXY) == INTERNAL


def test_rfc_7239_forwarded_is_read_only_when_configured() -> None:
    settings_ = WebhookUrlSettings(trusted_proxies=PROXY.trusted_proxies, proxy_headers="forwarded")
    headers = CIMultiDict(
        [
            ("Forwarded", 'for=192.0.2.1;proto=http;host="spoofed.example"'),
            ("Forwarded", 'for="[2001:db8::1]:4711";proto=https;host="hooks.example.com"'),
            *FORWARDED.items(),
        ]
    )
    got = external_url(INTERNAL, headers, peer="10.0.0.1", settings=settings_)
    assert got == "https://hooks.example.com/webhook/acme/t1/hook?x=1"
    assert (
        external_url(INTERNAL, {"Forwarded": 'host="a'}, peer="10.0.0.1", settings=settings_)
        == INTERNAL
    )
    # In x-forwarded mode a Forwarded header changes nothing.
    only_forwarded = {"Forwarded": "proto=https;host=hooks.example.com"}
    assert external_url(INTERNAL, only_forwarded, peer="10.0.0.1", settings=PROXY) == INTERNAL


def test_settings_from_env_parse_and_validate() -> None:
    settings_ = WebhookUrlSettings.from_env(
        {
            "CORRAL_PUBLIC_BASE_URL": "https://hooks.example.com",
            "CORRAL_TRUSTED_PROXIES": "10.0.0.1, 172.16.0.0/12,::1",
            "CORRAL_PROXY_HEADERS": "Forwarded",
        }
    )
    assert settings_.public_base_url == "https://hooks.example.com"
    assert [str(n) for n in settings_.trusted_proxies] == [
        "10.0.0.1/32",
        "172.16.0.0/12",
        "::1/128",
    ]
    assert settings_.proxy_headers == "forwarded"
    assert WebhookUrlSettings.from_env({}) == WebhookUrlSettings()
    for bad in (
        {"CORRAL_PUBLIC_BASE_URL": "ftp://x"},
        {"CORRAL_PUBLIC_BASE_URL": "https://x/?q=1"},
        {"CORRAL_PUBLIC_BASE_URL": "https://user@x"},
        {"CORRAL_TRUSTED_PROXIES": "10.0.0.0/33"},
        {"CORRAL_PROXY_HEADERS": "both"},
    ):
        with pytest.raises(WebhookUrlSettingsError, match=next(iter(bad))):
            WebhookUrlSettings.from_env(bad)


async def test_a_twilio_signature_over_the_public_url_verifies_behind_a_trusted_proxy() -> None:
    public = "https://hooks.example.com/webhook/acme/t1/hook?x=1"
    fields = {"MessageSid": "SM1", "MessageStatus": "sent"}
    headers = FORWARDED | FORM | {"X-Twilio-Signature": twilio_sig(public, fields)}
    body = urlencode(fields).encode()
    url = external_url(INTERNAL, headers, peer="10.0.0.1", settings=PROXY)
    assert (await check(route("twilio"), headers, body, url=url)).verified
    spoofed = external_url(INTERNAL, headers, peer="192.0.2.7", settings=PROXY)
    reason = await refused(route("twilio"), headers, body=body, url=spoofed)
    assert reason is SignatureReason.BAD_SIGNATURE


def test_an_aiohttp_requests_raw_path_and_peer_are_used() -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("10.0.0.1", 4711) if name == "peername" else default
    )
    request = make_mocked_request(
        "POST",
        "/webhook/acme/t1/hook?x=1&y=%20z",
        headers={"Host": "corral:8080"} | FORWARDED,
        transport=transport,
    )
    got = request_external_url(request, PROXY)
    assert got == "https://hooks.example.com/webhook/acme/t1/hook?x=1&y=%20z"
    assert request_external_url(request, WebhookUrlSettings()).startswith("http://corral:8080/")
