"""The running service, composed: audit log, config store, host, keys, registry, and the app.

`Service.start` opens each in order and refuses to start, saying why, when one cannot be used:
a config document with no valid version, a missing secret key under HIPAA, an invalid registry,
a sandbox that strict mode refuses. Then it restores every enabled activation from the store
and, on PostgreSQL, starts following the other hosts' changes (`runner.pg.follower`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Final

from aiohttp import web

from .api_models import ReadinessCheck
from .app import DEFAULT_MAX_BODY_BYTES, build_app
from .audit import AuditLog, AuditSettings
from .auth import ApiKeys
from .bootstrap_key import ensure_bootstrap_key
from .config_settings import ConfigSettings
from .config_store import JsonConfigStore
from .control import Control
from .host import Host, HostSettings
from .key_store import StoreKeyRepository
from .pg import PgBackend, PgConfigStore, store_url
from .pg.follower import Follower
from .ratelimit import AdminRateLimits, RateLimitSettings
from .registry import Registry, load_registry, registry_path_from_env
from .reload import ReloadReport, reload
from .webhook_url import client_address
from .webhooks import WebhookRouter, WebhookSettings

BOOTSTRAP_FILE_NAME: Final = "bootstrap-key"
DATABASE_PING_S: Final = 1.0  # /readyz waits at most this long for the database
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Everything the service reads at start; `from_env` documents where each comes from."""

    host: HostSettings
    config: ConfigSettings
    audit: AuditSettings
    registry_path: Path
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    store_url: str | None = None  # CORRAL_STORE: PostgreSQL instead of the JSON store

    @property
    def bootstrap_key_path(self) -> Path:
        """Where a generated bootstrap key is written (`CORRAL_BOOTSTRAP_KEY_FILE` overrides)."""
        return self.host.state_dir / BOOTSTRAP_FILE_NAME

    @classmethod
    def from_env(cls, state_dir: Path, environ: Mapping[str, str] = os.environ) -> ServiceSettings:
        """Read every `CORRAL_*` setting (and the Faxbot aliases) from `environ`."""
        return cls(
            host=HostSettings.from_env(state_dir, environ),
            config=ConfigSettings.from_env(environ, state_dir=state_dir),
            audit=AuditSettings.from_env(state_dir, environ),
            registry_path=registry_path_from_env(environ),
            rate_limits=RateLimitSettings.from_env(environ),
            webhooks=WebhookSettings.from_env(environ),
            environ=dict(environ),
            store_url=store_url(environ),
        )


class Service:
    """The opened service. Build with `await Service.start(settings)`; `close` when done."""

    def __init__(
        self,
        settings: ServiceSettings,
        audit: AuditLog,
        store: JsonConfigStore | PgConfigStore,
        host: Host,
        keys: ApiKeys,
        registry: Registry,
        bootstrap_key_file: Path | None,
        pg: PgBackend | None = None,
    ) -> None:
        self.settings = settings
        self.pg = pg
        self.audit = audit
        self.store = store
        self.host = host
        self.keys = keys
        self.registry = registry
        self.bootstrap_key_file = bootstrap_key_file
        self.control = Control(host, store)
        self.restored = 0
        self.follower: Follower | None = None
        webhooks = WebhookRouter(
            host.supervisor,
            host.manifests,
            audit,
            settings.webhooks,
            replay=pg.replay if pg is not None else None,  # one cache for every host
        )
        self.app: web.Application = build_app(
            self.control,
            keys,
            registry,
            audit,
            self.readiness,
            webhooks,
            limits=AdminRateLimits(settings.rate_limits),
            client_address=partial(client_address, settings=settings.webhooks.urls),
            max_body_bytes=settings.max_body_bytes,
        )

    @classmethod
    async def start(cls, settings: ServiceSettings) -> Service:
        """Open everything, restore the activations, and return the service (not yet serving).

        With `store_url` (CORRAL_STORE) the config, audit chain, replay cache and installed
        bundles live in PostgreSQL, whose schema must be current (`corral store migrate`).
        """
        pg = await PgBackend.connect(settings.store_url) if settings.store_url else None
        try:
            return await cls._start(settings, pg)
        except BaseException:
            if pg is not None:
                await pg.close()
            raise

    @classmethod
    async def _start(cls, settings: ServiceSettings, pg: PgBackend | None) -> Service:
        audit = await AuditLog.open(settings.audit, sink=pg.audit_sink if pg else None)
        host_ref: list[Host] = []

        def secret_fields(plugin_id: str) -> frozenset[str]:
            return host_ref[0].secret_fields(plugin_id) if host_ref else frozenset()

        store: JsonConfigStore | PgConfigStore
        if pg is not None:
            store = await pg.open_config(settings.config, secret_fields=secret_fields, audit=audit)
        else:
            store = await JsonConfigStore.open(
                settings.config, secret_fields=secret_fields, audit=audit
            )
        registry = await asyncio.to_thread(load_registry, settings.registry_path)
        features = store.features(await store.peek())
        host_settings = replace(settings.host, remote_install=features.plugin_install)
        host = await Host.start(host_settings, audit=audit)
        host_ref.append(host)
        service: Service | None = None
        try:
            if pg is not None:
                # Share this host's installs, fetch the others' (they load on a reload).
                host.installer.shared = pg.bundles
                await host.installer.sync_shared()
            repository = StoreKeyRepository(store)
            bootstrap = await ensure_bootstrap_key(
                repository, settings.bootstrap_key_path, environ=settings.environ
            )
            keys = ApiKeys(repository)
            service = cls(settings, audit, store, host, keys, registry, bootstrap, pg)
            service.restored = await service.control.restore()
            if pg is not None and isinstance(store, PgConfigStore):
                service.follower = Follower(service.control, store, pg.audit_sink, pg.url)
                service.follower.start()
        except BaseException:
            if service is not None:
                await service.close_follower()
            await host.close()
            raise
        await audit.record(
            "host.start",
            details={"plugins": len(host.plugins), "activations": service.restored},
        )
        return service

    async def readiness(self) -> list[ReadinessCheck]:
        """Return the readiness checks: store, plugins, sandbox, and the database (if any)."""
        failed = [s.record.plugin_id for s in self.host.statuses if not s.is_ok]
        mode = str(self.host.sandbox.settings.mode)
        database = [await self._database_check()] if self.pg is not None else []
        return [
            *database,
            ReadinessCheck(
                name="config_store",
                ok=True,
                detail=self.pg.location if self.pg else str(self.store.path),
            ),
            ReadinessCheck(
                name="plugins_verified",
                ok=True,  # refused bundles are not loaded; the others serve
                detail=f"{len(self.host.plugins)} verified"
                + (f"; refused: {', '.join(sorted(failed))}" if failed else ""),
            ),
            ReadinessCheck(name="sandbox", ok=True, detail=f"mode {mode}: every required layer"),
            ReadinessCheck(
                name="activations", ok=True, detail=f"{self.restored} restored at start"
            ),
        ]

    async def _database_check(self) -> ReadinessCheck:
        """Ping the database (bounded by DATABASE_PING_S); say what a failure means."""
        assert self.pg is not None
        waiting = self.pg.audit_sink.backlog
        backlog = f"; {waiting} audit record(s) waiting" if waiting else ""
        try:
            async with asyncio.timeout(DATABASE_PING_S):
                await self.pg.ping()
        except Exception as exc:  # StoreUnavailableError, TimeoutError: both mean "down"
            return ReadinessCheck(
                name="database",
                ok=False,
                detail=f"unreachable ({type(exc).__name__}): writes answer 503, webhooks "
                f"are served from the last known state{backlog}",
            )
        listening = self.follower is not None and self.follower.connected
        return ReadinessCheck(
            name="database",
            ok=True,
            detail=f"reachable; {'following' if listening else 'not yet following'} other "
            f"hosts' changes{backlog}",
        )

    async def reload(self) -> ReloadReport:
        """Re-read allowlist, checksums, registry and config from disk and apply them (SIGHUP).

        A part whose new file is invalid keeps its old state; the report says which and why.
        Serialized with API writes; audited as `host.reload`. See `runner.reload`.
        """
        return await reload(
            self.control, self.store, self.registry, self.settings.registry_path, self.audit
        )

    async def close_follower(self) -> None:
        """Stop following the other hosts (`close` does it first)."""
        follower, self.follower = self.follower, None
        if follower is not None:
            await follower.close()

    async def close(self) -> None:
        """Stop following, stop every worker and the host, then close the database pool."""
        try:
            await self.close_follower()
            await self.host.close()
        finally:
            if self.pg is not None:
                await self.pg.close()
