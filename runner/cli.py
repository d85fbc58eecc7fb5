"""The `corral` command line: `plugins list`, `sandbox doctor`, and every other command registered.

`serve` lives in `serve_cli`, `plugins install|checksum|verify` in `install_cli`, `plugins
from-manifest` in `manifest_cli`, `keys` in `keys_cli`, `tenants` in `tenants_cli`, `audit` and
`config` in `config_cli`. Exit codes and `--json` follow `cli_common`; docs/cli.md lists them all.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sandbox import (
    SandboxPolicy,
    format_table,
    probe,
    required_layers_missing,
)
from sandbox.probe import requested_layers
from sandbox.uids import DEFAULT_FIRST_UID

from . import __version__
from .bundles import discover
from .cli_common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNUSABLE,
    add_json_option,
    exit_epilog,
    fail,
    print_json,
)
from .config_cli import add_audit_commands, add_config_commands
from .install_cli import add_install_commands
from .keys_cli import add_keys_commands
from .logs import configure_logging
from .manifest_cli import add_from_manifest_command
from .serve_cli import add_serve_command
from .store_cli import add_store_commands
from .tenants_cli import add_tenants_commands

DEFAULT_PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"


def _plugins_list(args: argparse.Namespace) -> int:
    if not args.plugins_dir.is_dir():
        message = f"{args.plugins_dir} is not a directory"
        return fail("unusable", message, args.json, status=EXIT_UNUSABLE)
    bundles, problems = discover(args.plugins_dir)
    if args.json:
        print_json(
            {
                "plugins": [
                    {"id": b.manifest.id, "version": b.manifest.version, "path": str(b.path)}
                    for b in bundles
                ],
                "invalid": [{"path": str(p.path), "problems": p.error.problems} for p in problems],
            }
        )
    else:
        for b in bundles:
            print(f"{b.manifest.id:40} {b.manifest.version:12} {b.path}")
        for p in problems:
            print(f"INVALID {p.path}: {p.error}", file=sys.stderr)
    return EXIT_PROBLEMS if problems else EXIT_OK


def _sandbox_doctor(args: argparse.Namespace) -> int:
    report = probe()
    is_root = os.geteuid() == 0
    policy = SandboxPolicy(
        scratch_dir="/nonexistent",
        uid=DEFAULT_FIRST_UID if is_root else None,
        cgroup_dirs=("-",) if report.cgroups.parents else (),
    )
    missing = required_layers_missing(policy, report)
    if args.json:
        rows = [
            {
                "layer": str(row.layer),
                "available": row.available,
                "active": row.layer in requested_layers(policy) and row.available,
                "detail": row.reason,
            }
            for row in report.rows
        ]
        print_json({"layers": rows, "strict_ready": not missing})
    else:
        print(format_table(report, policy).rstrip())
        if missing:
            names = ", ".join(str(status.layer) for status in missing)
            print(f"\nstrict mode would refuse to start workers: missing {names}")
        else:
            print("\nevery layer strict mode requires is available")
    return EXIT_PROBLEMS if missing else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `corral` command."""
    parser = argparse.ArgumentParser(
        prog="corral", description="A sandboxed subprocess plugin runner."
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    add_serve_command(commands)

    plugins = commands.add_parser(
        "plugins", help="list, install, checksum and verify plugin bundles; write HTTP bundles"
    )
    plugin_commands = plugins.add_subparsers(dest="plugins_command", required=True)
    listing = plugin_commands.add_parser(
        "list",
        help="list bundles and validate their manifests",
        description="List the bundles directly under --plugins-dir (default: the shipped "
        "plugins/) and validate each plugin.toml.",
        epilog=exit_epilog("a manifest is invalid (each is named)", "no such directory"),
    )
    listing.add_argument(
        "--plugins-dir",
        type=Path,
        default=DEFAULT_PLUGINS_DIR,
        help="the directory of bundles (default: the shipped plugins/)",
    )
    add_json_option(listing)
    listing.set_defaults(func=_plugins_list)
    add_install_commands(plugin_commands)
    add_from_manifest_command(plugin_commands)

    sandbox = commands.add_parser("sandbox", help="inspect worker confinement")
    sandbox_commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    doctor = sandbox_commands.add_parser(
        "doctor",
        help="probe which confinement layers this kernel offers",
        description="Probe each layer in a throw-away child and say which strict mode needs.",
        epilog=exit_epilog("strict mode would refuse to start workers (a layer is missing)"),
    )
    add_json_option(doctor)
    doctor.set_defaults(func=_sandbox_doctor)

    add_keys_commands(commands)
    add_tenants_commands(commands)
    add_audit_commands(commands)
    add_config_commands(commands)
    add_store_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `corral` command; return its exit status."""
    configure_logging()  # CORRAL_LOG_FORMAT, CORRAL_LOG_LEVEL; JSON lines unless a terminal
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
