"""The errors of outbound HTTP on a plugin's behalf (the egress broker), their stable reasons, and
their translation into the protocol's coded `RemoteError`.

A refusal by policy is an `EgressDeniedError`; a request that was allowed but could not complete
(timeout, connection or TLS failure) is an `EgressFailedError`. Both carry a `reason` from
`EgressReason`; docs/egress.md lists them. Messages are safe to show the plugin: they name the
host at most, never a resolved address, a query string, a header or a body.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from protocol import ErrorCode, RemoteError

from .errors import RunnerError


class EgressReason(StrEnum):
    """Why a request was refused or failed; stable strings for plugins, audit and logs."""

    # Denied by policy (protocol code `egress_denied`).
    INVALID_REQUEST = "invalid_request"
    SCHEME_NOT_ALLOWED = "scheme_not_allowed"
    HOST_NOT_PERMITTED = "host_not_permitted"
    OPERATOR_DENIED = "operator_denied"
    NON_PUBLIC_ADDRESS = "non_public_address"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    REQUEST_TOO_LARGE = "request_too_large"
    RESPONSE_TOO_LARGE = "response_too_large"
    CONCURRENCY_LIMIT = "concurrency_limit"
    # Allowed, but not completed.
    TIMEOUT = "timeout"
    RESOLUTION_FAILED = "resolution_failed"
    CONNECT_FAILED = "connect_failed"
    TLS_FAILED = "tls_failed"
    UPSTREAM_ERROR = "upstream_error"
    BROKER_CLOSED = "broker_closed"


# The protocol code each failure travels under: plugins retry on `timeout` and treat
# `unavailable` as transient; everything else is `egress_denied`.
_FAILURE_CODES: Final[dict[EgressReason, ErrorCode]] = {
    EgressReason.TIMEOUT: ErrorCode.TIMEOUT,
    EgressReason.RESOLUTION_FAILED: ErrorCode.UNAVAILABLE,
    EgressReason.CONNECT_FAILED: ErrorCode.UNAVAILABLE,
    EgressReason.TLS_FAILED: ErrorCode.UNAVAILABLE,
    EgressReason.UPSTREAM_ERROR: ErrorCode.UNAVAILABLE,
    EgressReason.BROKER_CLOSED: ErrorCode.UNAVAILABLE,
}


class EgressSettingsError(RunnerError):
    """An egress setting (a `CORRAL_EGRESS_*` variable) is invalid; the host must not start."""


class EgressError(RunnerError):
    """Root of the broker's per-request errors; `reason` is an `EgressReason`.

    `host` is the host the request was refused for (on a redirect, the hop's host); `address`
    is the resolved address when one is known. Neither belongs in the plugin-facing message.
    """

    def __init__(
        self,
        reason: EgressReason,
        detail: str,
        *,
        host: str | None = None,
        address: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.host = host
        self.address = address

    @property
    def code(self) -> ErrorCode:
        """Return the protocol error code this error travels under."""
        return _FAILURE_CODES.get(self.reason, ErrorCode.EGRESS_DENIED)


class EgressDeniedError(EgressError):
    """Policy refused the request (or a redirect hop of it); nothing more was sent."""


class EgressFailedError(EgressError):
    """The request was allowed but did not complete: timeout, DNS, connection, TLS, protocol."""


def to_remote_error(exc: EgressError) -> RemoteError:
    """Return the `RemoteError` a host-function handler raises to answer the worker.

    Its code is `egress_denied` for a denial, `timeout` for a timeout and `unavailable` for the
    other failures; `data` is `{"reason": <EgressReason>}` in every case.
    """
    return RemoteError(exc.code, exc.detail, {"reason": str(exc.reason)})
