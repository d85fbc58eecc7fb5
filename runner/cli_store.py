"""The config store and audit log as the `keys` and `tenants` commands open them.

They read their settings as `corral serve` does (`--config` TOML file or `$CORRAL_CONFIG_FILE`,
then `CORRAL_*` variables, then `--state-dir`), so they open the daemon's store, and work with it
stopped or running: `JsonConfigStore` writes under a file lock both processes take, each write
applying its change to the document as read under that lock, so neither side's write is lost;
with `CORRAL_STORE` they open the PostgreSQL store, whose writes every host follows at once.
Secret fields are taken from the installed plugins' manifests, as the daemon takes them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from protocol import Manifest, ManifestError, load_manifest

from .audit import AuditError, AuditLog, AuditSettings, Outcome, Scalar
from .cli_common import EXIT_UNUSABLE, add_json_option, fail
from .config_errors import ConfigError
from .config_model import TENANT_ID_PATTERN
from .config_recovery import list_backups
from .config_settings import ConfigSettings
from .config_store import JsonConfigStore
from .daemon_settings import (
    CONFIG_FILE_VARIABLE,
    DaemonSettingsError,
    load_daemon_settings,
    to_environ,
)
from .errors import RunnerError
from .install_store import INDEX_NAME, InstalledPlugin, JsonRecords, PluginStore, RecordsError
from .paths import default_state_dir
from .pg import PgBackend, PgConfigStore, StoreError, store_url

_TENANT_RE: Final = re.compile(TENANT_ID_PATTERN)


class CliStateError(RunnerError):
    """The config store, the audit log or the plugin index cannot be used (exit 2)."""


@dataclass(frozen=True, slots=True)
class CliState:
    """What a command opened: the store, and the audit log (None for read-only commands).

    `manifests` holds the installed plugins' manifests by id (the version the host would load);
    `secret_fields` the secret config fields of every installed version of each.
    """

    store: JsonConfigStore | PgConfigStore
    audit: AuditLog | None
    manifests: dict[str, Manifest]
    secret_fields: dict[str, frozenset[str]]
    backend: PgBackend | None = None  # with CORRAL_STORE: the pool, closed by `run_with_state`

    async def record(
        self,
        action: str,
        *,
        outcome: Outcome = "success",
        tenant: str | None = None,
        target: str | None = None,
        **details: Scalar,
    ) -> None:
        """Append an audit event for an act done from the command line (no key: the host's)."""
        if self.audit is not None:
            await self.audit.record(
                action,
                outcome=outcome,
                tenant=tenant,
                target=target,
                details={"via": "cli", **details},
            )


Act = Callable[[argparse.Namespace, CliState], Awaitable[int]]


def run_with_state(args: argparse.Namespace, act: Act, *, writes: bool) -> int:
    """Open the state, run `act` on it, and return its exit status (2 if the state is unusable)."""

    async def run(environ: Mapping[str, str]) -> int:
        state = await open_state(environ, writes=writes)
        try:
            return await act(args, state)
        finally:
            if state.backend is not None:
                await state.backend.close()

    try:
        return asyncio.run(run(settings_environ(args)))
    except CliStateError as exc:
        return fail("unusable", str(exc), args.json, status=EXIT_UNUSABLE)


def tenant_id(text: str) -> str:
    """Return `text` if it is a well-formed tenant id; an argparse type (exit 2 otherwise)."""
    if not _TENANT_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a tenant id is 1 to 128 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    return text


def add_state_command(parser: argparse.ArgumentParser, act: Act, *, writes: bool) -> None:
    """Give a store command its `--config`, `--state-dir` and `--json`, and run it with `act`."""
    add_state_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=lambda args: run_with_state(args, act, writes=writes))


def add_state_options(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and `--state-dir`, meaning what they mean to `corral serve`."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"the TOML settings file `corral serve` uses (default: ${CONFIG_FILE_VARIABLE}, else "
        "none); CORRAL_* variables override it. The config document is its config_path "
        "(CORRAL_CONFIG_PATH), default config/corral.config.json in the working directory",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the state dir holding the plugin store and the audit log (default: state_dir, "
        "$CORRAL_STATE_DIR, /var/lib/corral as root, else ~/.local/state/corral)",
    )


def settings_environ(args: argparse.Namespace) -> dict[str, str]:
    """Return the environment `corral serve` would run with; raise CliStateError if unusable.

    The settings file and the `CORRAL_*` variables are merged as the daemon merges them, and
    `--state-dir` wins over both.
    """
    try:
        settings = load_daemon_settings(os.environ, args.config, {"state_dir": args.state_dir})
    except DaemonSettingsError as exc:
        raise CliStateError(str(exc)) from exc
    return to_environ(settings, os.environ)


async def open_state(environ: Mapping[str, str], *, writes: bool) -> CliState:
    """Open the store (and, when the command `writes`, the audit log); raise CliStateError.

    `environ` is `settings_environ`'s. A read-only command refuses a missing document rather
    than creating an empty one where the daemon is not looking; a writing command creates it,
    as `corral serve` would at its first start.
    """
    try:
        url = store_url(environ)
    except StoreError as exc:
        raise CliStateError(str(exc)) from exc
    if url is not None:
        return await _open_pg_state(environ, url, writes=writes)
    try:
        state_dir = default_state_dir(environ)
        settings = ConfigSettings.from_env(environ, state_dir=state_dir)
        if not writes and not await asyncio.to_thread(_document_exists, settings.path):
            raise CliStateError(
                f"no config document at {settings.path}: point --config (or CORRAL_CONFIG_PATH) "
                "at the one `corral serve` uses"
            )
        store_dir = state_dir / "store"
        records = await JsonRecords(store_dir / INDEX_NAME).all()
        manifests, secrets = await asyncio.to_thread(_manifests, PluginStore(store_dir), records)
        audit = await AuditLog.open(AuditSettings.from_env(state_dir, environ)) if writes else None
        store = await JsonConfigStore.open(
            settings,
            secret_fields=lambda plugin_id: secrets.get(plugin_id, frozenset()),
            audit=audit,
        )
    except (ConfigError, AuditError, RecordsError, OSError) as exc:
        raise CliStateError(str(exc)) from exc
    return CliState(store, audit, manifests, secrets)


async def _open_pg_state(environ: Mapping[str, str], url: str, *, writes: bool) -> CliState:
    """Open the PostgreSQL store `corral serve` shares with the other hosts (CORRAL_STORE).

    Writes take the same row lock and NOTIFY every host, which then applies them at once.
    """
    try:
        state_dir = default_state_dir(environ)
        settings = ConfigSettings.from_env(environ, state_dir=state_dir)
        store_dir = state_dir / "store"
        records = await JsonRecords(store_dir / INDEX_NAME).all()
        manifests, secrets = await asyncio.to_thread(_manifests, PluginStore(store_dir), records)
        backend = await PgBackend.connect(url)
    except (ConfigError, RecordsError, StoreError, OSError) as exc:
        raise CliStateError(str(exc)) from exc
    try:
        audit = (
            await AuditLog.open(AuditSettings.from_env(state_dir, environ), sink=backend.audit_sink)
            if writes
            else None
        )
        store = await backend.open_config(
            settings,
            secret_fields=lambda plugin_id: secrets.get(plugin_id, frozenset()),
            audit=audit,
        )
    except (ConfigError, AuditError, StoreError, OSError) as exc:
        await backend.close()
        raise CliStateError(str(exc)) from exc
    except BaseException:
        await backend.close()
        raise
    return CliState(store, audit, manifests, secrets, backend)


def _document_exists(path: Path) -> bool:
    return path.exists() or bool(list_backups(path))


def _manifests(
    store: PluginStore, records: list[InstalledPlugin]
) -> tuple[dict[str, Manifest], dict[str, frozenset[str]]]:
    """Read the manifest of every installed version, and the union of their secret fields.

    Unreadable entries are skipped here: the daemon's start-up verification refuses them, loudly.
    """
    manifests: dict[str, Manifest] = {}
    secrets: dict[str, frozenset[str]] = {}
    for record in records:
        try:
            manifest = load_manifest(store.path_for(record.digest))
        except (ManifestError, OSError):
            continue
        manifests[record.plugin_id] = manifest  # records are sorted: the last is the highest
        secrets[record.plugin_id] = secrets.get(record.plugin_id, frozenset()) | (
            manifest.secret_fields
        )
    return manifests, secrets
