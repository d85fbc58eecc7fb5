"""Dispatch one category call across a tenant's slots, by the category's rule.

Slots come from the supervisor (the tenant's own and the global ones, by priority, ties in
activation order); the rule comes from the category module (`protocol.categories`), so a new
category needs nothing here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from protocol import categories
from protocol.categories import Dispatch

from .errors import RunnerError
from .supervisor import ActivationKey, Supervisor


class NoProviderError(RunnerError):
    """The tenant has no active plugin of that category."""


class DispatchError(RunnerError):
    """Every slot that was tried failed (or, fail-closed, a must-pass slot failed)."""

    def __init__(self, message: str, outcomes: list[SlotOutcome]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


@dataclass(frozen=True, slots=True)
class SlotOutcome:
    """What one slot answered: a result or an error."""

    key: ActivationKey
    result: Any = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """The chosen result (or, for fan-out, None), whether the call passed, and every answer."""

    result: Any
    passed: bool = True
    outcomes: list[SlotOutcome] = field(default_factory=list)


class Dispatcher:
    """Call a category method for a tenant by the category's dispatch rule."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    async def dispatch(
        self,
        tenant_id: str,
        kind: str,
        method: str,
        params: Any,
        *,
        timeout_s: float | None = None,
    ) -> DispatchResult:
        """Dispatch `kind.method` for `tenant_id`; see `Dispatch` for what each rule returns.

        Raises NoProviderError without slots, KeyError for an unknown kind or method, and
        DispatchError when no slot gives an acceptable answer (first_success, pipeline) or a
        must-pass slot fails (fail closed).
        """
        spec = categories.get(kind)
        result_type = spec.methods[method].result
        wire = spec.wire_name(method)
        keys = [s.key for s in self._supervisor.visible(tenant_id, kind)]
        if not keys:
            raise NoProviderError(f"no active {kind} plugin for this tenant")

        async def one(key: ActivationKey, args: Any) -> SlotOutcome:
            try:
                result = await self._supervisor.call(
                    key, wire, args, timeout_s=timeout_s, result_type=result_type
                )
            except Exception as exc:  # recorded per slot; the rule decides what it means
                return SlotOutcome(key, error=exc)
            return SlotOutcome(key, result=result)

        def passes(result: Any) -> bool:
            return result is not None and (
                spec.verdict is None or bool(getattr(result, spec.verdict))
            )

        rule = spec.dispatch
        if rule is Dispatch.FAN_OUT:
            outcomes = list(await asyncio.gather(*(one(key, params) for key in keys)))
            return DispatchResult(None, all(o.error is None for o in outcomes), outcomes)
        outcomes = []
        args = params
        for key in keys:
            outcome = await one(key, args)
            outcomes.append(outcome)
            if rule is Dispatch.ALL_MUST_PASS:
                if outcome.error is not None:
                    raise DispatchError(f"{kind} slot {key.plugin_id} failed", outcomes)
                if not passes(outcome.result):
                    return DispatchResult(outcome.result, False, outcomes)
            elif rule is Dispatch.PIPELINE:
                if outcome.error is not None:
                    raise DispatchError(f"{kind} slot {key.plugin_id} failed", outcomes)
                args = outcome.result
            elif outcome.error is None and (
                rule is Dispatch.FIRST_SUCCESS or passes(outcome.result)
            ):
                return DispatchResult(outcome.result, True, outcomes)
        if rule is Dispatch.ALL_MUST_PASS:
            return DispatchResult(outcomes[-1].result, True, outcomes)
        if rule is Dispatch.PIPELINE:
            return DispatchResult(args, True, outcomes)
        if rule is Dispatch.FIRST_NON_EMPTY and all(o.error is None for o in outcomes):
            return DispatchResult(None, False, outcomes)
        raise DispatchError(f"no {kind} slot answered", outcomes)
