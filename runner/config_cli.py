"""The `corral audit verify` and `corral config rotate-key` commands; `runner.cli` registers them.

Exit codes: 0 success (the chain is intact; the key was rotated); 1 the chain has problems, or
the rotation was refused or failed; 2 usage errors (argparse), or no audit log to verify.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Final

from .audit import AuditError, AuditLog, AuditSettings
from .audit_verify import AuditReport, verify
from .config_errors import ConfigError
from .config_settings import ConfigSettings
from .config_store import JsonConfigStore
from .paths import default_state_dir

EXIT_PROBLEMS: Final = 1
EXIT_UNUSABLE: Final = 2


def add_audit_commands(commands: Any) -> None:
    """Register `audit verify` under the top-level `commands` subparsers."""
    audit = commands.add_parser("audit", help="inspect the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_commands.add_parser(
        "verify",
        help="check the audit trail's hash chain, rotated files included",
        description="Walk the log and its rotated files oldest first and check every line's "
        "hash and link. Exit 0 when intact, 1 when a line was edited, removed, inserted, "
        "reordered or torn (each problem is named with its file and line), 2 when there is "
        "no log to verify.",
    )
    check.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        help="the current log file (default: $CORRAL_AUDIT_LOG, else <state dir>/audit/audit.log)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_audit_verify)


def add_config_commands(commands: Any) -> None:
    """Register `config rotate-key` under the top-level `commands` subparsers."""
    config = commands.add_parser("config", help="manage the configuration store")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    rotate = config_commands.add_parser(
        "rotate-key",
        help="re-encrypt every stored secret with a new key",
        description="Generate a new secret key, re-encrypt every secret in the config document "
        "($CORRAL_CONFIG_PATH) and its backups with it, then retire the old key from "
        "$CORRAL_SECRET_KEY_FILE. Safe while corral serves: the old key stays readable until the "
        "rotation completes; if interrupted, run it again. Recorded in the audit trail. "
        "Exit 0 when rotated, 1 when refused or failed.",
    )
    rotate.add_argument("--json", action="store_true", help="machine-readable output")
    rotate.set_defaults(func=lambda args: asyncio.run(_rotate_key(args)))


def _audit_verify(args: argparse.Namespace) -> int:
    try:
        path = args.path or AuditSettings.from_env(default_state_dir()).path
        report = verify(path)
    except (OSError, AuditError) as exc:
        _fail("unusable", f"cannot verify the audit trail: {exc}", args.json)
        return EXIT_UNUSABLE
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        _print_report(report)
    return 0 if report.is_intact else EXIT_PROBLEMS


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
        settings = ConfigSettings.from_env()
        if not settings.is_hipaa and not settings.key_file.exists():  # HIPAA: open() says why
            raise ConfigError(f"no secret key file at {settings.key_file}: nothing to rotate")
        audit = await AuditLog.open(AuditSettings.from_env(default_state_dir()))
        store = await JsonConfigStore.open(settings, audit=audit)
        rotation = await store.rotate_secret_key()
    except (ConfigError, AuditError, OSError) as exc:
        _fail("rotation_failed", f"key rotation failed: {exc}", args.json)
        return EXIT_PROBLEMS
    if args.json:
        print(
            json.dumps(
                {
                    "key_id": rotation.key_id,
                    "retired": rotation.retired,
                    "secrets": rotation.secrets,
                    "files": rotation.files,
                    "skipped": rotation.skipped,
                }
            )
        )
    else:
        print(
            f"secret key rotated: now {rotation.key_id}, retired {', '.join(rotation.retired)}; "
            f"{rotation.secrets} secret(s) re-encrypted in {', '.join(rotation.files)}"
        )
        for name, why in rotation.skipped.items():
            print(f"  backup {name} left as it was: {why}", file=sys.stderr)
    return 0


def _fail(code: str, message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": code, "message": message}))
    else:
        print(f"corral: {message}", file=sys.stderr)
