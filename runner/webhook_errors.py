"""The errors of core webhook verification and their stable reason codes.

The router maps `SignatureError` to its answer (401) and logs `reason`; `RoutePolicyError` stops a
route from being mounted. Neither ever carries a secret or a received signature.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from .errors import RunnerError


class SignatureReason(StrEnum):
    """Why a request was refused; stable strings for logs, metrics and the router's answer."""

    MISSING_SECRET = "missing_secret"  # the tenant's config has no usable secret for the route
    MISSING_SIGNATURE = "missing_signature"  # a header the scheme needs is absent
    MALFORMED_SIGNATURE = "malformed_signature"  # a header is present but cannot be parsed
    BAD_SIGNATURE = "bad_signature"  # well-formed, but no signature matches the request
    STALE_TIMESTAMP = "stale_timestamp"  # authentic, but signed outside the tolerance window
    REPLAYED = "replayed"  # authentic and timely, but already accepted once


_MESSAGES: Final = {
    SignatureReason.MISSING_SECRET: "no usable signing secret is configured for this route",
    SignatureReason.MISSING_SIGNATURE: "the request carries no signature",
    SignatureReason.MALFORMED_SIGNATURE: "the signature header cannot be parsed",
    SignatureReason.BAD_SIGNATURE: "the signature does not match the request",
    SignatureReason.STALE_TIMESTAMP: "the signed timestamp is outside the tolerance window",
    SignatureReason.REPLAYED: "this delivery was already accepted",
}


class SignatureError(RunnerError):
    """The request failed core verification; `reason` says why, `route_id` where.

    The message is fixed per reason: it never quotes a secret or a received signature.
    """

    def __init__(self, reason: SignatureReason, route_id: str = "", detail: str = "") -> None:
        message = _MESSAGES[reason] + (f" ({detail})" if detail else "")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.route_id = route_id


class RoutePolicyError(RunnerError):
    """A route's `verify` scheme is not allowed under the deployment profile in force."""

    def __init__(self, route_id: str, scheme: str, profile: str) -> None:
        super().__init__(
            f"webhook route {route_id!r} declares verify={scheme!r}, which the {profile} profile "
            "refuses: every inbound webhook must be verified (by core or by the plugin)"
        )
        self.route_id = route_id
        self.scheme = scheme
        self.profile = profile
