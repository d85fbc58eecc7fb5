"""metrics_collector: ship metric points to an external system (fan-out)."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class MetricPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One sample; `kind` is counter, gauge or histogram."""

    name: str
    value: float
    kind: str = "gauge"
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    time: float | None = None  # seconds since the epoch


class MetricsBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Samples sent together."""

    points: list[MetricPoint]


SPEC: Final = CategorySpec(
    kind="metrics_collector",
    description="Datadog, OpenTelemetry, Prometheus push.",
    dispatch=Dispatch.FAN_OUT,
    methods={"record": MethodSpec(MetricsBatch, None)},
)
