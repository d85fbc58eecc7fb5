"""rate_limiter: decide whether a request may proceed now (all limiters must allow)."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class RateLimitQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Spend `cost` units from the budget named by `key`."""

    key: str
    cost: int = 1


class RateLimitDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether it may proceed; if not, when to retry."""

    allowed: bool
    remaining: int | None = None
    retry_after_s: float | None = None


SPEC: Final = CategorySpec(
    kind="rate_limiter",
    description="Token bucket, leaky bucket, vendor APIs.",
    dispatch=Dispatch.ALL_MUST_PASS,
    methods={"check": MethodSpec(RateLimitQuery, RateLimitDecision)},
    verdict="allowed",
)
