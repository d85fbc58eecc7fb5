"""lifecycle_hook: observe cross-cutting events (fan-out)."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class LifecycleEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something happened: `event` names it, `data` carries non-sensitive detail."""

    event: str
    tenant_id: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


SPEC: Final = CategorySpec(
    kind="lifecycle_hook",
    description="Cross-cutting observers.",
    dispatch=Dispatch.FAN_OUT,
    methods={"on_event": MethodSpec(LifecycleEvent, None)},
)
