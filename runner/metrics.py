"""Prometheus metrics at `/metrics`: one registry per app, mostly read from the host when scraped.

What the host already keeps (worker states, restarts, circuit openings, rate-limit rejections,
install refusals) is read by a collector at scrape time; RPC latency, webhook answers and egress
decisions are recorded as they happen, one observation each. Labels name plugins and bounded
reasons, never tenants (unbounded in number) nor anything taken from a request.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .access import OPERATOR, Handler, public, requires
from .audit import AuditLog
from .egress_audit import EgressEvent, observe_egress
from .errors import RunnerError
from .host import Host
from .http_errors import classify
from .keys import Scope
from .middleware import rate_limits_of
from .openapi import documented
from .ratelimit import AdminRateLimits, RateLimitedError
from .slot_types import WorkerState
from .webhooks import WEBHOOK_PLUGIN, webhook

PUBLIC_ENV: Final = "CORRAL_METRICS_PUBLIC"
PATH: Final = "/metrics"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN_PLUGIN: Final = "unknown"  # a webhook whose slug names no loaded plugin
# RPC round trips are tens of microseconds on an idle host; calls may run up to their deadline.
RPC_BUCKETS_S: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
ADMIN_LIMITERS: Final = {"read": "admin_read", "write": "admin_write", "failed_auth": "failed_auth"}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


class MetricsSettingsError(RunnerError):
    """A metrics setting in the environment is not understood."""


def metrics_public_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """Read `CORRAL_METRICS_PUBLIC` (default false: `/metrics` needs a key)."""
    text = environ.get(PUBLIC_ENV, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise MetricsSettingsError(f"{PUBLIC_ENV}={text!r} is not true or false")


class Metrics:
    """One app's registry and the metrics recorded as things happen."""

    def __init__(self, host: Host, limits: AdminRateLimits) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_seconds = Histogram(
            "corral_rpc_duration_seconds",
            "Host-side duration of calls to workers, from send to answer (errors included)",
            ["plugin", "method"],
            buckets=RPC_BUCKETS_S,
            registry=self.registry,
        )
        self.webhook_responses = Counter(
            "corral_webhook_responses",
            "Webhook answers by plugin and HTTP status (the plugin's or the host's)",
            ["plugin", "code"],
            registry=self.registry,
        )
        self.egress_requests = Counter(
            "corral_egress_requests",
            "Egress decisions per hop: allowed, denied (policy) or failed, with the reason",
            ["plugin", "outcome", "reason"],
            registry=self.registry,
        )
        self.webhook_rate_limited = 0
        self._rpc_children: dict[tuple[str, str], Histogram] = {}
        self._webhook_children: dict[tuple[str, int], Counter] = {}
        self.registry.register(_HostCollector(self, host, limits))

    def observe_call(self, plugin_id: str, method: str, seconds: float) -> None:
        """Record one worker call's duration (the `PluginWorker` hook; keep it cheap)."""
        child = self._rpc_children.get((plugin_id, method))
        if child is None:
            child = self._rpc_children[(plugin_id, method)] = self.rpc_seconds.labels(
                plugin_id, method
            )
        child.observe(seconds)

    def observe_egress(self, event: EgressEvent) -> None:
        """Record one egress decision (the egress audit sink's hook)."""
        self.egress_requests.labels(event.plugin_id, event.outcome, event.reason or "").inc()

    def observe_webhook(self, plugin_id: str, status: int, *, rate_limited: bool) -> None:
        """Record one webhook answer; `rate_limited`: the host's limiter refused it (429)."""
        child = self._webhook_children.get((plugin_id, status))
        if child is None:  # `labels` takes a lock and builds its key: once per (plugin, status)
            child = self._webhook_children[(plugin_id, status)] = self.webhook_responses.labels(
                plugin_id, str(status)
            )
        child.inc()
        if rate_limited:
            self.webhook_rate_limited += 1

    def exposition(self) -> bytes:
        """Return every metric in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)


class _HostCollector(Collector):
    """Read what the host counts anyway, at scrape time."""

    def __init__(self, metrics: Metrics, host: Host, limits: AdminRateLimits) -> None:
        self._metrics = metrics
        self._host = host
        self._limits = limits

    def describe(self) -> Iterable[Metric]:
        """Name the families (without reading the host) so the registry can check clashes."""
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        """Return every family with its current values."""
        workers, restarts, circuits, limited, refusals = self._families()
        supervisor = self._host.supervisor
        states: Tally[tuple[str, str]] = Tally()
        for activation in supervisor.statuses():
            states.update((activation.plugin_id, str(s.state)) for s in activation.slots)
        for plugin in sorted({plugin for plugin, _ in states}):
            for state in WorkerState:
                workers.add_metric([plugin, str(state)], states[(plugin, str(state))])
        for (plugin, reason), count in sorted(supervisor.restarts.items()):
            restarts.add_metric([plugin, reason], count)
        for (plugin, reason), count in sorted(supervisor.circuit_openings.items()):
            circuits.add_metric([plugin, reason], count)
        for kind, limiter in ADMIN_LIMITERS.items():
            limited.add_metric([limiter], self._limits.rejections[kind])
        limited.add_metric(["webhook"], self._metrics.webhook_rate_limited)
        for (stage, reason), count in sorted(self._host.installer.refusals.items()):
            refusals.add_metric([stage, reason], count)
        return [workers, restarts, circuits, limited, refusals]

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                "corral_workers",
                "Worker slots of active plugins by state (every state listed, 0 when none)",
                labels=["plugin", "state"],
            ),
            CounterMetricFamily(
                "corral_worker_restarts",
                "Worker restarts by reason: exited, hung, over_memory, start_failed, "
                "recycle, recycle_failed, operator",
                labels=["plugin", "reason"],
            ),
            CounterMetricFamily(
                "corral_circuit_openings",
                "Crash-loop circuits opened (crash_loop) or opened again (probe_failed)",
                labels=["plugin", "reason"],
            ),
            CounterMetricFamily(
                "corral_rate_limited",
                "Requests refused with 429 by a host rate limit",
                labels=["limiter"],
            ),
            CounterMetricFamily(
                "corral_install_refusals",
                "Bundles refused at install, at start-up verification or just before a spawn",
                labels=["stage", "reason"],
            ),
        )


METRICS: Final = web.AppKey("metrics", Metrics)


@requires(Scope.PLUGINS_READ, tenant_from=OPERATOR)
@documented(
    "Prometheus metrics (text exposition format 0.0.4)",
    responses={200: None},
    tag="health",
    description="Operator-wide: a tenant-bound key is refused. With `CORRAL_METRICS_PUBLIC=true` "
    "the route needs no key (for a scraper on a private network).",
)
async def metrics(request: web.Request) -> web.Response:
    """GET /metrics."""
    return _answer(request)


@public
@documented(
    "Prometheus metrics (text exposition format 0.0.4); public: CORRAL_METRICS_PUBLIC=true",
    responses={200: None},
    tag="health",
)
async def public_metrics(request: web.Request) -> web.Response:
    """GET /metrics, when the operator made it public."""
    return _answer(request)


def _answer(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def observe_webhooks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each webhook's answer by plugin and status (innermost: it sees raw errors)."""
    if request.match_info.handler is not webhook:
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _record_webhook(request, exc.status)
        raise
    except Exception as exc:
        _record_webhook(request, classify(exc).status, isinstance(exc, RateLimitedError))
        raise
    _record_webhook(request, response.status)
    return response


def _record_webhook(request: web.Request, status: int, rate_limited: bool = False) -> None:
    plugin = request.get(WEBHOOK_PLUGIN)  # what the router resolved the slug to
    if plugin is None:  # refused before the router looked the slug up
        slug = request.match_info.get("slug", "")
        manifests = request.app[_HOST].manifests
        plugin = next(
            (m.id for m in manifests.values() if slug in (m.url_slug, m.id)), UNKNOWN_PLUGIN
        )
    request.app[METRICS].observe_webhook(plugin, status, rate_limited=rate_limited)


_HOST: Final = web.AppKey("metrics_host", Host)


def install_metrics(
    app: web.Application,
    host: Host,
    audit: AuditLog | None,
    *,
    public_route: bool | None = None,
) -> Metrics:
    """Serve `/metrics` from a new registry on `app`, hooked to `host` and its egress `audit`.

    Call it after `install_middlewares` (it reads the admin rate limits and adds the innermost
    middleware). `public_route` defaults to `CORRAL_METRICS_PUBLIC`; raises MetricsSettingsError.
    Workers started before this call are not timed.
    """
    is_public = metrics_public_from_env() if public_route is None else public_route
    registry = Metrics(host, rate_limits_of(app))
    app[METRICS] = registry
    app[_HOST] = host
    host.supervisor.call_observer = registry.observe_call
    if audit is not None:
        observe_egress(audit, registry.observe_egress)
    app.router.add_get(PATH, public_metrics if is_public else metrics)
    app.middlewares.append(observe_webhooks)
    return registry
