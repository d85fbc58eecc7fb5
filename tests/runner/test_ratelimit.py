"""Token buckets on a fake clock: budgets, Retry-After, address throttling, bounded memory."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from runner.errors import RunnerError
from runner.ratelimit import (
    AdminRateLimits,
    RateLimitedError,
    RateLimitSettings,
    RouteTenantLimiter,
    TokenBucketLimiter,
    address_key,
)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    limiter: TokenBucketLimiter[str] = TokenBucketLimiter(60, clock=clock)  # 1 token/s
    assert all(limiter.take("k") == 0 for _ in range(60))
    assert limiter.take("k") == pytest.approx(1.0)
    clock.advance(0.5)
    assert limiter.wait_s("k") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.take("k") == 0 and limiter.take("k") > 0
    clock.advance(3600)
    assert all(limiter.take("k") == 0 for _ in range(60))  # refilled to the burst, no more
    assert limiter.take("k") > 0


def test_an_explicit_burst_caps_the_bucket() -> None:
    clock = FakeClock()
    limiter: TokenBucketLimiter[str] = TokenBucketLimiter(600, burst=5, clock=clock)
    assert [limiter.take("k") == 0 for _ in range(6)] == [True] * 5 + [False]
    assert limiter.wait_s("other") == 0 and len(limiter) == 1  # peeking stores nothing


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert RateLimitedError("x", 0.01).retry_after_s == 1
    assert RateLimitedError("x", 1.0).retry_after_s == 1
    assert RateLimitedError("x", 1.2).retry_after_s == 2
    assert RateLimitedError("x", 29.999).retry_after_s == 30


def test_reads_and_writes_have_separate_budgets_writes_stricter_by_default() -> None:
    assert RateLimitSettings() == RateLimitSettings(600.0, 60.0, 10.0, 10_000, 50_000)
    clock = FakeClock()
    limits = AdminRateLimits(RateLimitSettings(), clock=clock)
    for _ in range(60):
        limits.charge_key("k", is_write=True)
    with pytest.raises(RateLimitedError) as caught:
        limits.charge_key("k", is_write=True)
    assert caught.value.retry_after_s == 1 and "write" in str(caught.value)
    for _ in range(600):
        limits.charge_key("k", is_write=False)  # reads untouched by spent writes
    with pytest.raises(RateLimitedError) as caught:
        limits.charge_key("k", is_write=False)
    assert caught.value.retry_after_s == 1 and "read" in str(caught.value)
    limits.charge_key("other", is_write=True)  # per key
    clock.advance(1.0)
    limits.charge_key("k", is_write=True)


def test_failed_authentication_is_throttled_per_address() -> None:
    clock = FakeClock()
    limits = AdminRateLimits(RateLimitSettings(failed_auth_per_minute=10), clock=clock)
    for _ in range(10):
        limits.check_address("192.0.2.1")
        limits.record_failure("192.0.2.1")
    with pytest.raises(RateLimitedError) as caught:
        limits.check_address("192.0.2.1")
    assert caught.value.retry_after_s == 6  # one failure comes back every 6 s
    limits.check_address("192.0.2.2")
    clock.advance(6.0)
    limits.check_address("192.0.2.1")


def test_ipv6_clients_are_grouped_by_their_64_prefix() -> None:
    assert (
        address_key("2001:db8:1:2::1")
        == address_key("2001:db8:1:2:ffff::9")
        == ("2001:db8:1:2::/64")
    )
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key(None) == address_key("") == "unknown"
    assert len(address_key("x" * 1000)) == 64


def test_memory_stays_bounded_under_100k_random_keys_and_addresses() -> None:
    clock = FakeClock()
    limiter: TokenBucketLimiter[str] = TokenBucketLimiter(60, max_entries=1000, clock=clock)
    for _ in range(100_000):
        limiter.take(secrets.token_hex(16))
    assert len(limiter) == 1000
    limits = AdminRateLimits(RateLimitSettings(max_keys=500, max_addresses=2000), clock=clock)
    for i in range(100_000):
        limits.record_failure(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        limits.charge_key(secrets.token_hex(8), is_write=i % 2 == 0)
    assert limits.tracked() == {"reads": 500, "writes": 500, "addresses": 2000}


def test_the_least_recently_used_bucket_is_evicted_first() -> None:
    clock = FakeClock()
    limiter: TokenBucketLimiter[str] = TokenBucketLimiter(60, burst=1, max_entries=2, clock=clock)
    limiter.take("a")
    limiter.take("b")
    limiter.wait_s("a")  # a is used again, so b is the oldest
    limiter.take("c")
    assert limiter.wait_s("a") > 0 and limiter.wait_s("b") == 0 and limiter.wait_s("c") > 0


def test_route_tenant_budgets_are_separate_and_overridable() -> None:
    clock = FakeClock()
    limiter = RouteTenantLimiter(2, per_route={"strict": 1}, clock=clock)
    limiter.charge("hook", "acme")
    limiter.charge("hook", "acme")
    with pytest.raises(RateLimitedError) as caught:
        limiter.charge("hook", "acme")
    assert caught.value.retry_after_s == 30
    limiter.charge("hook", "other")
    limiter.charge("hook", None)
    limiter.charge("strict", "acme")
    with pytest.raises(RateLimitedError):
        limiter.charge("strict", "acme")


def test_settings_come_from_the_environment() -> None:
    settings = RateLimitSettings.from_env(
        {"CORRAL_RATE_READS_PER_MINUTE": "120", "CORRAL_RATE_WRITES_PER_MINUTE": "6"}
    )
    assert (settings.reads_per_minute, settings.writes_per_minute) == (120.0, 6.0)
    assert settings.failed_auth_per_minute == 10.0
    for bad in ("zero", "0", "-5"):
        with pytest.raises(RunnerError, match="CORRAL_RATE_FAILED_AUTH_PER_MINUTE"):
            RateLimitSettings.from_env({"CORRAL_RATE_FAILED_AUTH_PER_MINUTE": bad})


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(0)
    with pytest.raises(ValueError):
        TokenBucketLimiter(10, max_entries=0)


async def test_by_default_buckets_run_on_the_loops_monotonic_clock() -> None:
    limiter: TokenBucketLimiter[str] = TokenBucketLimiter(6000, burst=1)  # 100 tokens/s
    assert limiter.take("k") == 0 and limiter.take("k") > 0
    await asyncio.sleep(0.02)
    assert limiter.take("k") == 0
