"""What the egress broker records about each request: one `EgressEvent` per hop, and the sink
that appends them to the audit trail.

An event names the activation, the method, the host and port, the address connected to, the
status, byte counts, duration and outcome. Never a path, query string, header or body: those may
hold PHI or credentials.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from .audit import AuditLog, Outcome, Scalar
from .egress_errors import EgressDeniedError, EgressError

EgressOutcome = Literal["allowed", "denied", "failed"]
EgressAudit = Callable[["EgressEvent"], Awaitable[None]]
EgressObserver = Callable[["EgressEvent"], None]
AUDIT_ACTION: Final = "egress.request"
CANCELLED: Final = "cancelled"
_AUDIT_OUTCOMES: Final[dict[EgressOutcome, Outcome]] = {
    "allowed": "success",
    "denied": "denied",
    "failed": "failure",
}
_log = logging.getLogger(__name__)
_OBSERVERS: Final[weakref.WeakKeyDictionary[AuditLog, list[EgressObserver]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class EgressEvent:
    """One decision of the broker: a hop that was sent (allowed), refused, or that failed.

    `hop` counts redirects (0 is the plugin's own URL). `address` is the IP connected to (or
    refused), `status` the answer's status; both are None when not reached. `reason` is an
    `EgressReason` (or `cancelled`, or `internal` for a bug of ours) unless the outcome is
    `allowed`.
    """

    tenant_id: str
    plugin_id: str
    method: str
    host: str | None
    port: int | None
    address: str | None
    status: int | None
    request_bytes: int
    response_bytes: int
    duration_ms: float
    outcome: EgressOutcome
    reason: str | None = None
    hop: int = 0

    def details(self) -> dict[str, Scalar]:
        """Return the audit-trail `details` of this event (at most 16 scalars)."""
        return {
            "plugin": self.plugin_id,
            "method": self.method,
            "port": self.port,
            "address": self.address,
            "status": self.status,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "duration_ms": round(self.duration_ms, 1),
            "reason": self.reason,
            "hop": self.hop,
        }


def observe_egress(log: AuditLog, observer: EgressObserver) -> None:
    """Also hand `observer` (metrics) every event that `audit_log_sink(log)` records."""
    _OBSERVERS.setdefault(log, []).append(observer)


def audit_log_sink(log: AuditLog) -> EgressAudit:
    """Return an egress audit callback that appends each event to `log` as `egress.request`."""

    async def record(event: EgressEvent) -> None:
        for observe in _OBSERVERS.get(log, ()):
            observe(event)
        await log.record(
            AUDIT_ACTION,
            outcome=_AUDIT_OUTCOMES[event.outcome],
            tenant=event.tenant_id,
            target=event.host,
            details=event.details(),
        )

    return record


@dataclass
class _Hop:
    host: str | None
    port: int | None
    method: str
    started: float
    address: str | None = None
    request_bytes: int = 0


@dataclass
class Trail:
    """The events of one plugin request, collected while it runs and emitted once it ends."""

    tenant_id: str
    plugin_id: str
    method: str
    clock: Callable[[], float]
    events: list[EgressEvent] = field(default_factory=list)
    _hop: _Hop | None = None

    def begin(self, host: str, port: int | None, method: str, request_bytes: int) -> None:
        """Start the next hop (the first, or the one a redirect points to)."""
        self._hop = _Hop(host, port, method, self.clock(), request_bytes=request_bytes)

    def connecting(self, address: str) -> None:
        """Note the address the current hop connects to (or was refused for)."""
        if self._hop is not None:
            self._hop.address = address

    def finish(self, status: int, response_bytes: int) -> None:
        """Close the current hop as allowed and answered."""
        self._close("allowed", None, status, response_bytes)

    def fail(self, exc: EgressError) -> None:
        """Close the current hop (or record a hop-less one) as denied or failed by `exc`."""
        outcome: EgressOutcome = "denied" if isinstance(exc, EgressDeniedError) else "failed"
        if self._hop is None:
            self._hop = _Hop(exc.host, None, self.method, self.clock())
        if exc.address is not None:
            self._hop.address = exc.address
        self._close(outcome, str(exc.reason), None, 0)

    def abort(self, reason: str) -> None:
        """Close the current hop as failed for `reason` (`cancelled`, or `internal` for a bug)."""
        if self._hop is None:
            self._hop = _Hop(None, None, self.method, self.clock())
        self._close("failed", reason, None, 0)

    def _close(
        self, outcome: EgressOutcome, reason: str | None, status: int | None, received: int
    ) -> None:
        hop, self._hop = self._hop, None
        if hop is None:
            return
        self.events.append(
            EgressEvent(
                tenant_id=self.tenant_id,
                plugin_id=self.plugin_id,
                method=hop.method,
                host=hop.host,
                port=hop.port,
                address=hop.address,
                status=status,
                request_bytes=hop.request_bytes,
                response_bytes=received,
                duration_ms=(self.clock() - hop.started) * 1000.0,
                outcome=outcome,
                reason=reason,
                hop=len(self.events),
            )
        )

    async def emit(self, sink: EgressAudit | None) -> None:
        """Hand every event to `sink`; a failing sink is logged, never raised to the plugin."""
        for event in self.events:
            if event.outcome != "allowed":
                _log.info(
                    "egress %s for tenant=%s plugin=%s: %s %s (%s)",
                    event.outcome,
                    event.tenant_id,
                    event.plugin_id,
                    event.method,
                    event.host,
                    event.reason,
                )
            if sink is None:
                continue
            try:
                await sink(event)
            except Exception:
                _log.exception(
                    "could not record the egress event for tenant=%s plugin=%s host=%s",
                    event.tenant_id,
                    event.plugin_id,
                    event.host,
                )
        self.events.clear()
