"""The `corral store migrate|status` commands: the PostgreSQL schema of `CORRAL_STORE`.

Exit codes: 0 success (migrated; the schema is current); 1 the schema is newer than this corral,
or (status) migrations are pending; 2 `CORRAL_STORE` unset or unusable, or the database
unreachable. The URL is shown without its password.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

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
from .pg import (
    STORE_VARIABLE,
    SchemaStatus,
    SchemaTooNewError,
    StoreError,
    connect,
    migrate,
    redact,
    status,
    store_url,
)
from .pg.connect import CONNECTION_ERRORS, unavailable


def add_store_commands(commands: Any) -> None:
    """Register `store migrate` and `store status` under the top-level `commands` subparsers."""
    store = commands.add_parser("store", help="manage the PostgreSQL store (CORRAL_STORE)")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    migrating = store_commands.add_parser(
        "migrate",
        help="apply the pending schema migrations",
        description="Apply every pending migration to the database of store (CORRAL_STORE), in "
        "one transaction under an advisory lock: safe to run from several hosts at once and "
        "while they serve. A schema newer than this corral is refused, never touched.",
        epilog=exit_epilog(
            "the schema is newer than this corral", "CORRAL_STORE unset, or the database unusable"
        ),
    )
    add_state_options(migrating)
    add_json_option(migrating)
    migrating.set_defaults(func=lambda args: _run(args, _migrate))
    showing = store_commands.add_parser(
        "status",
        help="show the schema version and the pending migrations",
        description="Show the schema version of the database of store (CORRAL_STORE), the "
        "version this corral needs, and every migration applied.",
        epilog=exit_epilog(
            "migrations are pending, or the schema is newer than this corral",
            "CORRAL_STORE unset, or the database unusable",
        ),
    )
    add_state_options(showing)
    add_json_option(showing)
    showing.set_defaults(func=lambda args: _run(args, _status))


def _run(args: argparse.Namespace, act: Any) -> int:
    try:
        url = store_url(settings_environ(args))
    except (CliStateError, StoreError) as exc:
        return fail("unusable", str(exc), args.json, status=EXIT_UNUSABLE)
    if url is None:
        message = f"{STORE_VARIABLE} is not set: corral uses the JSON store, which needs no schema"
        return fail("unusable", message, args.json, status=EXIT_UNUSABLE)
    try:
        status_code: int = asyncio.run(act(args, url))
    except SchemaTooNewError as exc:
        return fail("schema_too_new", str(exc), args.json, status=EXIT_PROBLEMS)
    except StoreError as exc:
        return fail("unusable", str(exc), args.json, status=EXIT_UNUSABLE)
    return status_code


async def _migrate(args: argparse.Namespace, url: str) -> int:
    conn = await connect(url)
    try:
        applied = await migrate(conn)
        found = await status(conn)
    except CONNECTION_ERRORS as exc:
        raise unavailable(url, exc) from exc
    finally:
        await conn.close()
    if args.json:
        print_json({"database": redact(url), **found.to_json(), "applied_now": applied})
    elif applied:
        numbers = ", ".join(str(v) for v in applied)
        print(f"{redact(url)}: applied migration(s) {numbers}; schema version {found.current}")
    else:
        print(f"{redact(url)}: schema version {found.current} is current; nothing to apply")
    return EXIT_OK


async def _status(args: argparse.Namespace, url: str) -> int:
    conn = await connect(url)
    try:
        found = await status(conn)
    except CONNECTION_ERRORS as exc:
        raise unavailable(url, exc) from exc
    finally:
        await conn.close()
    if args.json:
        print_json({"database": redact(url), **found.to_json()})
    else:
        _print_status(url, found)
    return EXIT_OK if found.is_current else EXIT_PROBLEMS


def _print_status(url: str, found: SchemaStatus) -> None:
    print(f"{redact(url)}: schema version {found.current}, this corral needs {found.latest}")
    for migration in found.applied:
        print(
            f"  applied {migration.version:4} {migration.applied_at:%Y-%m-%d %H:%M:%S%z}  "
            f"{migration.name}"
        )
    if found.current > found.latest:
        print("the schema is newer than this corral: upgrade corral")
    elif found.pending:
        print(f"pending: {', '.join(str(v) for v in found.pending)}; run `corral store migrate`")
