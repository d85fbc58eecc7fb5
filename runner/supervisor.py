"""The supervisor: every activation's slots, their lifecycle, and calls routed to them.

An activation is one plugin for one tenant (or `global`) with its own config; it has one slot per
instance. The supervisor starts, reconfigures (drain and switch) and stops activations, and
routes a tenant's calls only to that tenant's slots and the global ones. Which plugins may run is
install's business; how a worker is confined is the launcher's.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from protocol import Manifest

from .errors import RunnerError
from .logs import log_context
from .restart_policy import RestartSettings
from .slot import Slot
from .slot_types import SlotStatus, WatchSettings
from .worker import CallObserver, PluginWorker

GLOBAL: Final = "global"
_log = logging.getLogger(__name__)


class ActivationNotFoundError(RunnerError):
    """No such activation is visible to the caller (never says whether another tenant has it)."""


class ActivationExistsError(RunnerError):
    """The plugin is already active for that tenant."""


class PinningError(RunnerError):
    """A worker was about to serve a call for an identity it is not pinned to."""


@dataclass(frozen=True, slots=True, order=True)
class ActivationKey:
    """Which tenant (or `global`) runs which plugin."""

    tenant_id: str
    plugin_id: str


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: the verified bundle to run, its manifest, and this tenant's config."""

    tenant_id: str
    plugin_id: str
    bundle_dir: Path
    manifest: Manifest
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> ActivationKey:
        """The activation's key."""
        return ActivationKey(self.tenant_id, self.plugin_id)

    @cached_property
    def config_digest(self) -> str:
        """A digest of the config: workers are pinned to it."""
        canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def instances(self) -> int:
        """How many workers the activation runs (the largest `instances` of its categories)."""
        return max((c.instances for c in self.manifest.categories), default=1)

    def scrub(self, text: str) -> str:
        """Replace every secret config value in `text` with `***`."""
        for name in self.manifest.secret_fields:
            value = self.config.get(name)
            if isinstance(value, str) and len(value) >= 4:
                text = text.replace(value, "***")
        return text


StartWorker = Callable[[ActivationSpec], Awaitable[PluginWorker]]


@dataclass(frozen=True, slots=True)
class ActivationStatus:
    """What an operator sees of one activation."""

    tenant_id: str
    plugin_id: str
    config_digest: str
    slots: list[SlotStatus]


class _Activation:
    def __init__(self, spec: ActivationSpec, slots: list[Slot], order: int) -> None:
        self.spec = spec
        self.slots = slots
        self.order = order
        self._turn = itertools.count()

    def next_slot(self) -> Slot:
        """Round-robin over the slots, preferring one with a ready worker."""
        start = next(self._turn)
        n = len(self.slots)
        for i in range(n):
            slot = self.slots[(start + i) % n]
            if slot.current is not None and slot.current.is_alive:
                return slot
        return self.slots[start % n]


class Supervisor:
    """Own every activation's slots. Close it with `await close()`."""

    def __init__(
        self,
        start_worker: StartWorker,
        *,
        watch: WatchSettings | None = None,
        restart: RestartSettings | None = None,
    ) -> None:
        self._start_worker = start_worker
        self._watch = watch or WatchSettings()
        self._restart = restart or RestartSettings()
        self._activations: dict[ActivationKey, _Activation] = {}
        self._order = itertools.count()
        self._lock = asyncio.Lock()
        # Read by metrics at scrape time; they outlive activations, as counters must.
        self.restarts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.circuit_openings: collections.Counter[tuple[str, str]] = collections.Counter()
        self.call_observer: CallObserver | None = None  # times every call of workers started later

    def _factory(self, spec: ActivationSpec) -> Callable[[], Awaitable[PluginWorker]]:
        async def start() -> PluginWorker:
            worker = await self._start_worker(spec)
            worker.observe_call = self.call_observer
            return worker

        return start

    def _slot_event(self, plugin_id: str, kind: str, reason: str) -> None:
        if kind == "circuit_open":
            self.circuit_openings[(plugin_id, reason)] += 1
        else:
            self.restarts[(plugin_id, reason)] += 1

    async def activate(self, spec: ActivationSpec, *, wait_s: float = 0.0) -> bool:
        """Start supervising `spec`; wait up to `wait_s` for every slot to be ready.

        Returns whether all slots are ready; slots that are not keep trying (with backoff).
        Raises ActivationExistsError if (tenant, plugin) is already active.
        """
        async with self._lock:
            if spec.key in self._activations:
                raise ActivationExistsError(
                    f"{spec.plugin_id} is already active for {spec.tenant_id}"
                )
            slots = [
                Slot(
                    i,
                    self._factory(spec),
                    watch=self._watch,
                    restart=self._restart,
                    scrub=spec.scrub,
                    name=f"{spec.plugin_id}@{spec.tenant_id}#{i}",
                    on_event=functools.partial(self._slot_event, spec.plugin_id),
                )
                for i in range(spec.instances)
            ]
            self._activations[spec.key] = _Activation(spec, slots, next(self._order))
            # The keepers log as the activation's, not as the request that started them.
            with log_context(request_id=None, tenant=spec.tenant_id, plugin=spec.plugin_id):
                for slot in slots:
                    slot.start()
        if wait_s <= 0:
            return False
        ready = await asyncio.gather(*(slot.wait_ready(wait_s) for slot in slots))
        return all(ready)

    async def reconfigure(self, spec: ActivationSpec) -> None:
        """Switch an activation to a new config without dropping a call.

        New workers are started first, for every slot; only when all answered their handshake are
        calls switched to them, and the old ones drained and stopped. If any fails to start, the
        ones started are stopped, the old workers keep serving, and the start error is raised.
        A slot stopped for idleness gets its new worker too (so the config is proven to start);
        it stops again after the idle time.
        """
        activation = self._get(spec.key)
        factory = self._factory(spec)
        started = await asyncio.gather(
            *(factory() for _ in activation.slots), return_exceptions=True
        )
        failures = [r for r in started if isinstance(r, BaseException)]
        if failures:
            for worker in started:
                if isinstance(worker, PluginWorker):
                    await worker.stop()
            raise failures[0]
        workers = [w for w in started if isinstance(w, PluginWorker)]
        activation.spec = spec
        for slot, worker in zip(activation.slots, workers, strict=True):
            await slot.switch_to(worker, factory)

    async def deactivate(self, key: ActivationKey) -> None:
        """Drain and stop the activation's workers, and forget it."""
        async with self._lock:
            activation = self._activations.pop(key, None)
        if activation is None:
            raise ActivationNotFoundError(f"{key.plugin_id} is not active for {key.tenant_id}")
        await asyncio.gather(*(slot.stop() for slot in activation.slots))

    async def close(self) -> None:
        """Stop every activation (drain, SIGTERM, SIGKILL, reap); bounded by the slots' limits."""
        async with self._lock:
            activations = list(self._activations.values())
            self._activations.clear()
        await asyncio.gather(*(s.stop() for a in activations for s in a.slots))

    def active_keys(self) -> list[ActivationKey]:
        """Every active (tenant, plugin), in activation order."""
        return list(self._activations)

    def spec_of(self, key: ActivationKey) -> ActivationSpec | None:
        """Return the spec an activation runs now, or None if it is not active."""
        activation = self._activations.get(key)
        return activation.spec if activation is not None else None

    def resolve(self, tenant_id: str, plugin_id: str) -> ActivationKey:
        """Return the key a tenant's call to `plugin_id` goes to: its own, else the global one."""
        for key in (ActivationKey(tenant_id, plugin_id), ActivationKey(GLOBAL, plugin_id)):
            if key in self._activations:
                return key
        raise ActivationNotFoundError(f"{plugin_id} is not active for this tenant")

    def visible(self, tenant_id: str, kind: str | None = None) -> list[ActivationSpec]:
        """The activations a tenant may use (its own and the global ones), in dispatch order.

        With `kind`, only those implementing it, sorted by the manifest's priority for it, ties
        kept in activation order.
        """
        chosen = [
            a
            for a in self._activations.values()
            if a.spec.tenant_id in (tenant_id, GLOBAL)
            and (kind is None or any(c.kind == kind for c in a.spec.manifest.categories))
        ]
        if kind is not None:
            chosen.sort(key=lambda a: (a.spec.manifest.priority(kind), a.order))
        else:
            chosen.sort(key=lambda a: a.order)
        return [a.spec for a in chosen]

    async def call(
        self,
        key: ActivationKey,
        method: str,
        params: Any = None,
        *,
        timeout_s: float | None = None,
        result_type: type[Any] | None = None,
    ) -> Any:
        """Call `method` on a worker of the activation `key` (pinned to its current config)."""
        activation = self._get(key)
        spec = activation.spec

        def pinned(worker: PluginWorker) -> None:
            w = worker.spec
            if (w.tenant_id, w.plugin_id, w.config_digest) != (
                spec.tenant_id,
                spec.plugin_id,
                spec.config_digest,
            ):
                raise PinningError(f"worker {worker.pid} is not pinned to {key}")

        return await activation.next_slot().call(
            method, params, timeout_s=timeout_s, result_type=result_type, check=pinned
        )

    def statuses(self) -> list[ActivationStatus]:
        """Every activation with every slot's status."""
        return [
            ActivationStatus(
                a.spec.tenant_id,
                a.spec.plugin_id,
                a.spec.config_digest,
                [slot.status() for slot in a.slots],
            )
            for a in self._activations.values()
        ]

    def reset_circuit(self, key: ActivationKey) -> None:
        """Operator reset of every slot's circuit."""
        for slot in self._get(key).slots:
            slot.reset_circuit()

    async def restart(self, key: ActivationKey, instance: int | None = None) -> None:
        """Replace the activation's workers (or one instance's) with fresh ones; drain the old."""
        activation = self._get(key)
        factory = self._factory(activation.spec)
        for slot in activation.slots:
            if instance is None or slot.instance == instance:
                await slot.replace(factory)
                self.restarts[(key.plugin_id, "operator")] += 1

    def _get(self, key: ActivationKey) -> _Activation:
        activation = self._activations.get(key)
        if activation is None:
            raise ActivationNotFoundError(f"{key.plugin_id} is not active for {key.tenant_id}")
        return activation
