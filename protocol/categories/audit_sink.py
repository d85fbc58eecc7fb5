"""audit_sink: receive every audit event (fan-out: every active sink gets each event)."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One administrative or security event; never carries bodies, payloads or secrets."""

    time: str  # RFC 3339
    action: str
    outcome: str
    tenant_id: str | None = None
    actor: str | None = None
    target: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


SPEC: Final = CategorySpec(
    kind="audit_sink",
    description="SIEM forwarding, S3, syslog.",
    dispatch=Dispatch.FAN_OUT,
    methods={"record": MethodSpec(AuditEvent, None)},
)
