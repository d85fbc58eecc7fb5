"""Token-bucket rate limits on the loop's monotonic clock, in bounded memory.

`TokenBucketLimiter` is the mechanism; `AdminRateLimits` applies it to the admin API (per-key
read and write budgets, failed authentication per client address) and `RouteTenantLimiter`
to routes shared by tenants, such as webhooks. Callers map `RateLimitedError` to 429.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from .errors import RunnerError

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)

DEFAULT_MAX_ENTRIES: Final = 10_000
_MAX_ADDRESS_CHARS: Final = 64


def loop_clock() -> float:
    """Return the running loop's monotonic time in seconds."""
    return asyncio.get_running_loop().time()


class RateLimitedError(RunnerError):
    """A budget is spent (429); retry after `retry_after_s` whole seconds, at least 1."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter(Generic[K]):
    """One token bucket per key: `per_minute` tokens a minute, holding at most `burst`.

    At most `max_entries` buckets are kept, least recently used evicted first, so a flood of
    distinct keys costs bounded memory; an evicted bucket comes back full, which only ever
    lets a forgotten key through sooner. `burst` defaults to a minute's worth.
    """

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Clock = loop_clock,
    ) -> None:
        if per_minute <= 0 or max_entries < 1:
            raise ValueError("per_minute and max_entries must be positive")
        self.rate_per_s = per_minute / 60.0
        self.capacity = float(burst if burst is not None else per_minute)
        self.max_entries = max_entries
        self._clock = clock
        self._buckets: OrderedDict[K, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def wait_s(self, key: K, cost: float = 1.0) -> float:
        """Return 0 if `cost` tokens are available for `key`, else seconds until they are."""
        bucket = self._refilled(key)
        if bucket is None or bucket.tokens >= cost:
            return 0.0
        return (cost - bucket.tokens) / self.rate_per_s

    def take(self, key: K, cost: float = 1.0) -> float:
        """Spend `cost` tokens and return 0, or spend nothing and return the wait in seconds."""
        bucket = self._refilled(key)
        if bucket is None:
            bucket = self._insert(key)
        if bucket.tokens < cost:
            return (cost - bucket.tokens) / self.rate_per_s
        bucket.tokens -= cost
        return 0.0

    def _refilled(self, key: K) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        now = self._clock()
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate_per_s)
        bucket.updated = now
        self._buckets.move_to_end(key)
        return bucket

    def _insert(self, key: K) -> _Bucket:
        while len(self._buckets) >= self.max_entries:
            self._buckets.popitem(last=False)
        bucket = _Bucket(self.capacity, self._clock())
        self._buckets[key] = bucket
        return bucket


def _env_number(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise RunnerError(f"{name}={value!r} is not a number") from None
    if number <= 0:
        raise RunnerError(f"{name} must be positive, not {value!r}")
    return number


@dataclass(frozen=True)
class RateLimitSettings:
    """Admin API budgets, in requests per minute, and how many buckets each limiter keeps."""

    reads_per_minute: float = 600.0
    writes_per_minute: float = 60.0
    failed_auth_per_minute: float = 10.0
    max_keys: int = 10_000
    max_addresses: int = 50_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RateLimitSettings:
        """Read `CORRAL_RATE_READS_PER_MINUTE`, `..._WRITES_...`, `..._FAILED_AUTH_...`."""
        return cls(
            reads_per_minute=_env_number(environ, "CORRAL_RATE_READS_PER_MINUTE", 600.0),
            writes_per_minute=_env_number(environ, "CORRAL_RATE_WRITES_PER_MINUTE", 60.0),
            failed_auth_per_minute=_env_number(environ, "CORRAL_RATE_FAILED_AUTH_PER_MINUTE", 10.0),
        )


def address_key(address: str | None) -> str:
    """Return the bucket key of a client address: IPv6 by its /64, which one host may own."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:_MAX_ADDRESS_CHARS]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AdminRateLimits:
    """The admin API's budgets: reads and writes per key, failed authentication per address."""

    def __init__(self, settings: RateLimitSettings, *, clock: Clock = loop_clock) -> None:
        self.settings = settings
        self._reads: TokenBucketLimiter[str] = TokenBucketLimiter(
            settings.reads_per_minute, max_entries=settings.max_keys, clock=clock
        )
        self._writes: TokenBucketLimiter[str] = TokenBucketLimiter(
            settings.writes_per_minute, max_entries=settings.max_keys, clock=clock
        )
        self._failures: TokenBucketLimiter[str] = TokenBucketLimiter(
            settings.failed_auth_per_minute, max_entries=settings.max_addresses, clock=clock
        )
        self.rejections: Counter[str] = Counter()  # "read", "write", "failed_auth": for metrics

    def charge_key(self, key_id: str, *, is_write: bool) -> None:
        """Spend one request of the key's read or write budget; raise `RateLimitedError`."""
        limiter = self._writes if is_write else self._reads
        wait_s = limiter.take(key_id)
        if wait_s:
            kind = "write" if is_write else "read"
            self.rejections[kind] += 1
            raise RateLimitedError(f"too many {kind} requests for this key", wait_s)

    def check_address(self, address: str | None) -> None:
        """Raise `RateLimitedError` while `address` has spent its failed-authentication budget."""
        wait_s = self._failures.wait_s(address_key(address))
        if wait_s:
            self.rejections["failed_auth"] += 1
            raise RateLimitedError("too many failed authentication attempts", wait_s)

    def record_failure(self, address: str | None) -> None:
        """Spend one failed authentication of `address`'s budget."""
        self._failures.take(address_key(address))

    def tracked(self) -> dict[str, int]:
        """Return how many buckets each limiter holds (for tests and metrics)."""
        return {
            "reads": len(self._reads),
            "writes": len(self._writes),
            "addresses": len(self._failures),
        }


class RouteTenantLimiter:
    """A budget per (route, tenant), `per_minute` unless `per_route` names the route."""

    def __init__(
        self,
        per_minute: float,
        *,
        per_route: Mapping[str, float] | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Clock = loop_clock,
    ) -> None:
        self._default = TokenBucketLimiter[tuple[str, str | None]](
            per_minute, max_entries=max_entries, clock=clock
        )
        self._routes = {
            route: TokenBucketLimiter[tuple[str, str | None]](
                rate, max_entries=max_entries, clock=clock
            )
            for route, rate in (per_route or {}).items()
        }

    def charge(self, route: str, tenant_id: str | None) -> None:
        """Spend one request of the (route, tenant) budget; raise `RateLimitedError`."""
        limiter = self._routes.get(route, self._default)
        wait_s = limiter.take((route, tenant_id))
        if wait_s:
            raise RateLimitedError(f"too many requests to {route} for this tenant", wait_s)
