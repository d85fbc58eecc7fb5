"""The `corral tenants list|show|activate|deactivate` commands; `runner.cli` registers them.

They read and write the tenants in the config document directly, with corral serve running or
not. Settings are shown with every secret masked as `***`. Activation records written here are
picked up by a running daemon at its next start or SIGHUP reload; the admin API applies an
activation at once (it also starts the workers).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import JsonValue

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
from .config_model import Activation, ConfigDocument, Tenant
from .config_secrets import MASK, is_encrypted, mask_settings
from .control import validate_settings
from .control_errors import SettingsInvalidError
from .errors import RunnerError

APPLIES: Final = (
    "A running corral serve picks the change up at its next start or SIGHUP reload; the admin "
    "API (POST /api/v1/admin/plugins/{id}/activate or /deactivate) applies it at once."
)


def _activations(tenant: Tenant) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json") for a in tenant.activations]


def _masked(
    state: CliState, tenant: Tenant
) -> tuple[dict[str, JsonValue], dict[str, dict[str, JsonValue]]]:
    """Return the tenant's own settings and its plugins' settings, every secret as `***`.

    A secret is a field an installed manifest marks secret, or any value stored encrypted.
    """
    settings = tenant.settings
    extras = {
        name: MASK if is_encrypted(value) else value
        for name, value in (settings.__pydantic_extra__ or {}).items()
    }
    plugins = {
        plugin_id: mask_settings(values, state.secret_fields.get(plugin_id, frozenset()))
        for plugin_id, values in settings.plugins.items()
    }
    return extras, plugins


async def _list(args: argparse.Namespace, state: CliState) -> int:
    tenants = sorted((await state.store.load()).document.tenants.items())
    if args.json:
        rows = [
            {
                "id": name,
                "activations": _activations(tenant),
                "configured": sorted(tenant.settings.plugins),
            }
            for name, tenant in tenants
        ]
        print_json({"tenants": rows})
        return EXIT_OK
    if not tenants:
        print(f"no tenants in {state.store.path}")
    for name, tenant in tenants:
        print(name)
        _print_activations(tenant)
    return EXIT_OK


def _print_activations(tenant: Tenant) -> None:
    for a in tenant.activations:
        print(f"  {a.plugin_id:40} {'enabled' if a.enabled else 'disabled'}")


async def _show(args: argparse.Namespace, state: CliState) -> int:
    doc = (await state.store.load()).document
    tenant = doc.tenants.get(args.tenant)
    if tenant is None:
        return fail("not_found", f"no tenant {args.tenant!r}", args.json, status=EXIT_PROBLEMS)
    extras, plugins = _masked(state, tenant)
    if args.json:
        settings = {**extras, "plugins": plugins}
        print_json({"id": args.tenant, "activations": _activations(tenant), "settings": settings})
        return EXIT_OK
    print(f"tenant {args.tenant}")
    _print_activations(tenant)
    for name, value in extras.items():
        print(f"  {name}: {json.dumps(value)}")
    for plugin_id, values in plugins.items():
        print(f"  settings of {plugin_id}:")
        for name, value in values.items():
            print(f"    {name}: {json.dumps(value)}")
    return EXIT_OK


async def _activate(args: argparse.Namespace, state: CliState) -> int:
    manifest = state.manifests.get(args.plugin)
    if manifest is None:
        await state.record(
            "plugin.activate", outcome="failure", tenant=args.tenant, target=args.plugin
        )
        return fail(
            "not_installed",
            f"{args.plugin} is not installed in the plugin store (corral plugins install)",
            args.json,
            status=EXIT_PROBLEMS,
        )
    try:
        validate_settings(manifest, await state.store.plugin_config(args.tenant, args.plugin))
    except ConfigError as exc:  # a stored secret does not decrypt with the key file
        return fail("unusable", str(exc), args.json, status=EXIT_UNUSABLE)
    except SettingsInvalidError as exc:
        await state.record(
            "plugin.activate", outcome="failure", tenant=args.tenant, target=args.plugin
        )
        problems = [{"path": path, "rule": rule} for path, rule in exc.problems]
        if not args.json:
            for p in problems:
                print(f"  {p['path']}: {p['rule']}", file=sys.stderr)
        return fail(
            "settings_invalid",
            f"{exc}: set them first (PUT /api/v1/plugins/{args.plugin}/config)",
            args.json,
            status=EXIT_PROBLEMS,
            problems=problems,
        )
    return await _write(args, state, enabled=True)


async def _deactivate(args: argparse.Namespace, state: CliState) -> int:
    return await _write(args, state, enabled=False)


class _NotActivatedError(RunnerError):
    """Deactivating found no activation record: nothing is written."""


async def _write(args: argparse.Namespace, state: CliState, *, enabled: bool) -> int:
    changed: list[bool] = []

    def write(doc: ConfigDocument) -> ConfigDocument:
        tenant = doc.tenants.get(args.tenant)
        if not enabled and (tenant is None or tenant.activation(args.plugin) is None):
            raise _NotActivatedError  # checked under the store's lock, so no race adds one
        changed.append(_set_enabled(doc, args.tenant, args.plugin, enabled))
        return doc

    action = "plugin.activate" if enabled else "plugin.deactivate"
    try:
        await state.store.update(write)
    except _NotActivatedError:
        message = f"{args.plugin} is not activated for tenant {args.tenant!r}"
        return fail("not_found", message, args.json, status=EXIT_PROBLEMS)
    except ConfigError as exc:
        await state.record(action, outcome="error", tenant=args.tenant, target=args.plugin)
        return fail("not_stored", f"not written: {exc}", args.json, status=EXIT_PROBLEMS)
    await state.record(action, tenant=args.tenant, target=args.plugin, changed=changed[-1])
    if args.json:
        print_json(
            {
                "tenant_id": args.tenant,
                "plugin_id": args.plugin,
                "enabled": enabled,
                "changed": changed[-1],
            }
        )
    else:
        verb = "activated" if enabled else "deactivated"
        note = "" if changed[-1] else " (it already was)"
        print(f"{verb} {args.plugin} for tenant {args.tenant}{note}. {APPLIES}")
    return EXIT_OK


def _set_enabled(doc: ConfigDocument, tenant: str, plugin_id: str, enabled: bool) -> bool:
    """Write the activation record as the admin API does; return whether anything changed."""
    record = doc.tenant(tenant)
    activation = record.activation(plugin_id)
    now = datetime.now(UTC)
    if activation is None:
        record.activations.append(
            Activation(plugin_id=plugin_id, enabled=enabled, activated_at=now)
        )
        return True
    if activation.enabled == enabled:
        return False
    activation.enabled = enabled
    if enabled:
        activation.activated_at = now
    return True


def add_tenants_commands(commands: Any) -> None:
    """Register `tenants list|show|activate|deactivate` under the top-level `commands`."""
    tenants = commands.add_parser(
        "tenants",
        help="list tenants, show their settings, activate and deactivate plugins",
        description="Read and change the tenants of the config document, with corral serve "
        "running or not.",
    )
    sub = tenants.add_subparsers(dest="tenants_command", required=True)
    listing = sub.add_parser(
        "list",
        help="list tenants with their activations",
        description="List every tenant with its activations (plugin, enabled) and the plugins "
        "it has settings for.",
        epilog=exit_epilog(None, "no config document or an unusable one"),
    )
    add_state_command(listing, _list, writes=False)

    show = sub.add_parser(
        "show",
        help="show a tenant's activations and settings, secrets masked",
        description="Show a tenant's activations and settings; every secret (a field the "
        "plugin's manifest marks secret, or a value stored encrypted) is shown as ***.",
        epilog=exit_epilog("no such tenant", "no config document or an unusable one"),
    )
    show.add_argument("tenant", metavar="TENANT", type=tenant_id)
    add_state_command(show, _show, writes=False)

    for name, act, what in (
        ("activate", _activate, "activate a plugin for a tenant (or `global`)"),
        ("deactivate", _deactivate, "deactivate a plugin for a tenant, keeping its settings"),
    ):
        refusal = (
            "the plugin is not installed or the tenant's stored settings do not fit its schema"
            if name == "activate"
            else "the plugin is not activated for this tenant"
        )
        command = sub.add_parser(
            name,
            help=what,
            description=f"{what[0].upper()}{what[1:]}: write the activation record to the config "
            f"document. {APPLIES} Recorded in the audit trail.",
            epilog=exit_epilog(refusal, "an unusable store"),
        )
        command.add_argument("tenant", metavar="TENANT", type=tenant_id)
        command.add_argument("plugin", metavar="PLUGIN", help="the plugin id")
        add_state_command(command, act, writes=True)
