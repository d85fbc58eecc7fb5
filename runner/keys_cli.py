"""The `corral keys create|list|revoke` commands; `runner.cli` registers them.

They act as the host itself (no calling key) through the same `ApiKeys` the admin API uses, on the
config store `corral serve` reads on every request: a key created here works at once and a key
revoked here is refused from the daemon's next request, whether it runs or not. The key itself is
printed once, by `create`, on stdout; it is never logged, and only its hash is stored.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from .auth import ApiKeys, KeyNotFoundError, KeyRequestError
from .cli_common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNUSABLE,
    exit_epilog,
    fail,
    print_json,
)
from .cli_store import CliState, add_state_command, tenant_id
from .config_errors import ConfigError
from .key_store import StoreKeyRepository
from .keys import KeyRecord, Scope


def _keys(state: CliState) -> ApiKeys:
    return ApiKeys(StoreKeyRepository(state.store))


async def _create(args: argparse.Namespace, state: CliState) -> int:
    try:
        record, key = await _keys(state).create(args.name, args.scopes, args.tenant, by=None)
    except KeyRequestError as exc:
        return fail("bad_request", str(exc), args.json, status=EXIT_UNUSABLE)
    except ConfigError as exc:
        return fail("not_stored", f"the key was not stored: {exc}", args.json, status=EXIT_PROBLEMS)
    scopes = ",".join(sorted(record.scopes))
    await state.record(
        "key.create", tenant=args.tenant, target=record.id, scopes=scopes, bound_to=args.tenant
    )
    if args.json:
        print_json({"key": key, "record": record.public()})
    else:
        print(key)
        print(
            f"created API key {record.id} ({_describe(record)}); this is the only time the key "
            "is shown: store it now",
            file=sys.stderr,
        )
    return EXIT_OK


async def _list(args: argparse.Namespace, state: CliState) -> int:
    records = await _keys(state).list_keys(by=None)
    if args.json:
        print_json({"keys": [r.public() for r in records]})
        return EXIT_OK
    if not records:
        print(f"no API keys in {state.store.path}")
    for r in records:
        status = f"revoked {_time(r.revoked_at)}" if r.revoked_at else "active"
        tenant = r.tenant_id or "(operator)"
        scopes = ",".join(sorted(r.scopes)) or "-"
        print(f"{r.id}  {r.name[:24]:24} {tenant:20} {scopes:50} {_time(r.created_at)}  {status}")
    return EXIT_OK


async def _revoke(args: argparse.Namespace, state: CliState) -> int:
    keys = _keys(state)
    before = await keys.repository.get(args.key_id)
    try:
        record = await keys.revoke(args.key_id, by=None)
    except KeyNotFoundError as exc:
        await state.record("key.revoke", outcome="failure", target=args.key_id)
        return fail("not_found", str(exc), args.json, status=EXIT_PROBLEMS)
    except ConfigError as exc:
        return fail(
            "not_stored", f"the key was not revoked: {exc}", args.json, status=EXIT_PROBLEMS
        )
    already = before is not None and before.is_revoked
    await state.record("key.revoke", target=record.id, already_revoked=already)
    if args.json:
        print_json({"record": record.public(), "already_revoked": already})
    elif already:
        print(f"API key {record.id} ({record.name}) was already revoked at {record.revoked_at}")
    else:
        print(f"revoked API key {record.id} ({_describe(record)}); refused from the next request")
    return EXIT_OK


def _describe(record: KeyRecord) -> str:
    bound = f"tenant {record.tenant_id}" if record.tenant_id else "operator-wide"
    return f"{record.name}; {bound}; scopes {', '.join(sorted(record.scopes))}"


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


def add_keys_commands(commands: Any) -> None:
    """Register `keys create|list|revoke` under the top-level `commands` subparsers."""
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke admin API keys",
        description="Manage admin API keys in the config store, with corral serve running or not.",
    )
    sub = keys.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser(
        "create",
        help="create an API key and print it, once",
        description="Create a key with the given scopes (operator-wide, or bound to one tenant) "
        "and print it on stdout: this is the only time it is shown, only its hash is stored. A "
        "running corral serve accepts it from its next request. Recorded in the audit trail.",
        epilog=exit_epilog("the key could not be stored", "an empty name or an unusable store"),
    )
    create.add_argument("--name", required=True, help="what the key is for (1 to 200 characters)")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=[s.value for s in Scope],
        help="a scope to grant; repeat for several",
    )
    create.add_argument(
        "--tenant", type=tenant_id, default=None, help="bind the key to this tenant only"
    )
    add_state_command(create, _create, writes=True)

    listing = sub.add_parser(
        "list",
        help="list API keys (never the keys themselves)",
        description="List every key, revoked ones included, oldest first: id, name, scopes, "
        "tenant, created and revoked times. Neither keys nor hashes are shown. The last use of "
        "a key is not recorded.",
        epilog=exit_epilog(None, "no config document or an unusable one"),
    )
    add_state_command(listing, _list, writes=False)

    revoke = sub.add_parser(
        "revoke",
        help="revoke an API key at once",
        description="Revoke the key with this id (the `crl_<id>_...` part): a running corral "
        "serve refuses it from its next request. Revoking a revoked key changes nothing. "
        "Recorded in the audit trail.",
        epilog=exit_epilog("no key has this id", "an unusable store"),
    )
    revoke.add_argument("key_id", metavar="ID", help="the key's id (16 hex digits)")
    add_state_command(revoke, _revoke, writes=True)
