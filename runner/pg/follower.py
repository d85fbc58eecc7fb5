"""`Follower`: this host applies the changes other hosts make through the shared database.

It owns a `PgListener` on `corral_config` and `corral_bundles`. On a notification, and after
every (re)connection, it first appends the audit backlog, then, holding `Control.writes`
exclusively as a reload does (no local API write interleaves): a config change re-reads the
document and reconciles every drifted activation (`runner.reload.reconcile_drifted`, the reload's
own step); a bundle change fetches and verifies what other hosts installed, drops what they
uninstalled, reloads the plugin list and reconciles the activations of the plugins that changed.
docs/scale-out.md describes the behaviour; the host's own writes reconcile themselves (the
notification of a local write then finds nothing to do).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from ..config_errors import ConfigError, ConfigWriteError
from ..control import Control
from ..host import TrustReload
from ..reload import ActivationChange, reconcile_drifted
from .audit import PgAuditSink
from .bundles import CHANNEL as BUNDLES_CHANNEL
from .config_store import CHANNEL as CONFIG_CHANNEL
from .config_store import PgConfigStore
from .listener import DEFAULT_KEEPALIVE_S, PgListener

CHANNELS: Final = (CONFIG_CHANNEL, BUNDLES_CHANNEL)
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What one catching up did: channels handled, plugins (un)loaded, workers changed."""

    channels: frozenset[str]
    loaded: tuple[str, ...] = ()
    unloaded: tuple[str, ...] = ()
    activations: tuple[ActivationChange, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def changed_anything(self) -> bool:
        """Whether a plugin or a worker changed, or something could not be applied."""
        return bool(self.loaded or self.unloaded or self.activations or self.problems)

    def summary(self) -> str:
        """Return one log line."""
        changes = ", ".join(f"{a.plugin_id}/{a.tenant_id} {a.workers}" for a in self.activations)
        line = (
            f"followed {', '.join(sorted(self.channels))}: loaded {len(self.loaded)} "
            f"({', '.join(self.loaded) or '-'}), unloaded {len(self.unloaded)} "
            f"({', '.join(self.unloaded) or '-'}), {len(self.activations)} activation(s) "
            f"changed ({changes or '-'})"
        )
        return line + "".join(f"; problem: {p}" for p in self.problems)


class Follower:
    """Follow the other hosts: `start` once the host serves, `close` before closing the host."""

    def __init__(
        self,
        control: Control,
        store: PgConfigStore,
        audit_sink: PgAuditSink,
        url: str,
        *,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
    ) -> None:
        self.listener = PgListener(url, CHANNELS, self._on_change, keepalive_s=keepalive_s)
        self.catch_ups = 0
        self.last: CatchUp | None = None
        self._control = control
        self._store = store
        self._audit = audit_sink

    @property
    def connected(self) -> bool:
        """Whether the listening connection is up (changes elsewhere reach this host)."""
        return self.listener.connected

    def start(self) -> None:
        """Start listening (the first connection catches up on everything)."""
        self.listener.start()

    async def close(self) -> None:
        """Stop listening; a catching up in progress is cancelled."""
        await self.listener.close()

    async def catch_up(self, channels: frozenset[str]) -> CatchUp:
        """Apply what changed on `channels`; return what was done.

        Raises ConfigWriteError or StoreUnavailableError when the database went away meanwhile
        (the listener then catches up again later).
        """
        await self._audit.flush()
        trust = TrustReload()
        activations: list[ActivationChange] = []
        problems: list[str] = []
        async with self._control.writes.exclusive():
            if CONFIG_CHANNEL in channels:
                await self._reread(problems)
                done = await reconcile_drifted(self._control)
                activations.extend(done.activations)
                problems.extend(done.problems)
            if BUNDLES_CHANNEL in channels:
                trust = await self._pull()
                changed = {*trust.loaded, *trust.unloaded}
                if changed:
                    done = await reconcile_drifted(self._control, plugins=changed)
                    activations.extend(done.activations)
                    problems.extend(done.problems)
        report = CatchUp(
            channels, trust.loaded, trust.unloaded, tuple(activations), tuple(problems)
        )
        self.catch_ups += 1
        self.last = report
        if report.changed_anything:
            _log.info("%s", report.summary())
        return report

    async def _on_change(self, channels: frozenset[str]) -> None:
        await self.catch_up(channels)

    async def _reread(self, problems: list[str]) -> None:
        try:
            await self._store.reread()  # also re-reads the key file (a rotation elsewhere)
        except ConfigWriteError:
            raise
        except ConfigError as exc:
            problems.append(f"config document: {exc}; the running workers keep their settings")

    async def _pull(self) -> TrustReload:
        host = self._control.host
        fetched, dropped = await host.installer.pull_shared()
        if not fetched and not dropped:
            return TrustReload()
        return await host.refresh_plugins()


__all__ = ["CHANNELS", "CatchUp", "Follower"]
