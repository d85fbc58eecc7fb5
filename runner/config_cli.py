"""The `corral audit verify` and `corral config rotate-key` commands; `runner.cli` registers them.

Exit codes: 0 success (the chain is intact; the key was rotated); 1 the chain has problems, or
the rotation was refused or failed; 2 usage errors, no audit log to verify, or a setting (an
environment variable) that cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from .audit import AuditError, AuditLog, AuditSettings
from .audit_verify import AuditReport, verify
from .cli_common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNUSABLE,
    add_json_option,
    exit_epilog,
    fail,
    print_json,
)
from .cli_store import CliStateError, add_state_options, settings_environ
from .config_errors import ConfigError
from .config_rotation import KeyRotation
from .config_settings import ConfigSettings
from .config_store import JsonConfigStore
from .paths import default_state_dir
from .pg import PgBackend, StoreError, connect, store_url, verify_database


def add_audit_commands(commands: Any) -> None:
    """Register `audit verify` under the top-level `commands` subparsers."""
    audit = commands.add_parser("audit", help="inspect the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_commands.add_parser(
        "verify",
        help="check the audit trail's hash chain, rotated files included",
        description="Walk the log and its rotated files oldest first and check every line's "
        "hash and link; each problem is named with its file and line.",
        epilog=exit_epilog(
            "a line was edited, removed, inserted, reordered or torn",
            "no log to verify (or it cannot be read)",
        ),
    )
    check.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        help="the current log file (default: audit_log, $CORRAL_AUDIT_LOG, else <state dir>/audit/"
        "audit.log, as corral serve with the same settings writes it)",
    )
    add_state_options(check)
    add_json_option(check)
    check.set_defaults(func=_audit_verify)


def add_config_commands(commands: Any) -> None:
    """Register `config rotate-key` under the top-level `commands` subparsers."""
    config = commands.add_parser("config", help="manage the configuration store")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    rotate = config_commands.add_parser(
        "rotate-key",
        help="re-encrypt every stored secret with a new key",
        description="Generate a new secret key, re-encrypt every secret in the config document "
        "(config_path, $CORRAL_CONFIG_PATH) and its backups with it, then retire the old key "
        "from the key file (secret_key_file, $CORRAL_SECRET_KEY_FILE). Safe while corral "
        "serves: the old key stays readable until the rotation completes; if interrupted, run "
        "it again. Recorded in the audit trail. With CORRAL_STORE (PostgreSQL) every kept "
        "version in the database is re-encrypted in one transaction; then copy the new key "
        "file to every other host and send them SIGHUP (docs/scale-out.md).",
        epilog=exit_epilog(
            "the rotation was refused or failed (no key file yet, an unusable document or key "
            "file)",
            "a CORRAL_* setting that cannot be used",
        ),
    )
    add_state_options(rotate)
    add_json_option(rotate)
    rotate.set_defaults(func=lambda args: asyncio.run(_rotate_key(args)))


def _audit_verify(args: argparse.Namespace) -> int:
    try:
        environ = settings_environ(args)
        url = None if args.path else store_url(environ)
        if url is not None:  # CORRAL_STORE: the one chain every host appends to
            report = asyncio.run(_verify_database(url))
        else:
            path = args.path or AuditSettings.from_env(default_state_dir(environ), environ).path
            report = verify(path)
    except (OSError, AuditError, CliStateError, StoreError) as exc:
        message = f"cannot verify the audit trail: {exc}"
        return fail("unusable", message, args.json, status=EXIT_UNUSABLE)
    if args.json:
        print_json(report.to_json())
    else:
        _print_report(report)
    return EXIT_OK if report.is_intact else EXIT_PROBLEMS


async def _verify_database(url: str) -> AuditReport:
    conn = await connect(url)
    try:
        return await verify_database(conn)
    finally:
        await conn.close()


def _print_report(report: AuditReport) -> None:
    files = ", ".join(report.files)
    if report.is_intact:
        print(
            f"audit trail intact: {report.lines} lines in {files}; "
            f"head seq {report.head_seq} hash {report.head_hash}"
        )
        return
    print(f"audit trail BROKEN: {len(report.problems)} problem(s) in {files}:")
    for problem in report.problems:
        print(f"  {problem.kind}: {problem.message}")


async def _rotate_key(args: argparse.Namespace) -> int:
    try:
        environ = settings_environ(args)
        state_dir = default_state_dir(environ)
        settings = ConfigSettings.from_env(environ, state_dir=state_dir)
        audit_settings = AuditSettings.from_env(state_dir, environ)
    except (ConfigError, AuditError, CliStateError) as exc:
        return fail("unusable", str(exc), args.json, status=EXIT_UNUSABLE)
    try:
        if not settings.is_hipaa and not settings.key_file.exists():  # HIPAA: open() says why
            raise ConfigError(f"no secret key file at {settings.key_file}: nothing to rotate")
        url = store_url(environ)
        if url is not None:
            rotation = await _rotate_in_database(url, settings, audit_settings)
        else:
            audit = await AuditLog.open(audit_settings)
            store = await JsonConfigStore.open(settings, audit=audit)
            rotation = await store.rotate_secret_key()
    except (ConfigError, AuditError, OSError, StoreError) as exc:
        message = f"key rotation failed: {exc}"
        return fail("rotation_failed", message, args.json, status=EXIT_PROBLEMS)
    if args.json:
        print_json(
            {
                "key_id": rotation.key_id,
                "retired": rotation.retired,
                "secrets": rotation.secrets,
                "files": rotation.files,
                "skipped": rotation.skipped,
            }
        )
    else:
        print(
            f"secret key rotated: now {rotation.key_id}, retired {', '.join(rotation.retired)}; "
            f"{rotation.secrets} secret(s) re-encrypted in {', '.join(rotation.files)}"
        )
        for name, why in rotation.skipped.items():
            print(f"  backup {name} left as it was: {why}", file=sys.stderr)
        if store_url(environ) is not None:
            print(
                f"now copy {settings.key_file} to every other host (mode 0600) and send them "
                "SIGHUP: until then they keep serving but cannot apply new settings",
                file=sys.stderr,
            )
    return EXIT_OK


async def _rotate_in_database(
    url: str, settings: ConfigSettings, audit_settings: AuditSettings
) -> KeyRotation:
    """Rotate through `PgConfigStore.rotate_secret_key`: the shared document, the local key file."""
    pg = await PgBackend.connect(url)
    try:
        audit = await AuditLog.open(audit_settings, sink=pg.audit_sink)
        store = await pg.open_config(settings, audit=audit)
        return await store.rotate_secret_key()
    finally:
        await pg.close()
