"""The `corral plugins from-manifest` command: a Faxbot HTTP-manifest entry written out as a bundle.

The entry comes from the plugin registry (by id) or from a JSON file; the conversion is
`runner.http_manifest_bundle.write_bundle`'s. Writing a bundle approves nothing: the output says
which checksums.txt line the bundle needs, and it still needs an allowlist.toml entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from protocol import ManifestError, load_manifest

from .checksums import checksum_line, checksum_name
from .cli_common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNUSABLE,
    add_json_option,
    exit_epilog,
    fail,
    print_json,
)
from .digest import UnsafeTreeError, tree_digest
from .errors import RunnerError
from .http_manifest_bundle import HttpManifestBundleError, write_bundle
from .install_cli import DEFAULT_CHECKSUMS
from .registry import MAX_REGISTRY_BYTES, RegistryError, load_registry, registry_path_from_env

DEFAULT_CATEGORY: Final = "outbound_fax"


class _SourceError(RunnerError):
    """SOURCE names no registry entry, or its file cannot be read as one (exit 2)."""


def _entry(source: str, registry: Path | None) -> dict[str, Any]:
    """Return the registry entry SOURCE names: a JSON file holding one entry, or a registry id."""
    path = Path(source)
    if path.is_file():
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_REGISTRY_BYTES + 1)
            if len(raw) > MAX_REGISTRY_BYTES:
                raise _SourceError(f"{path}: larger than {MAX_REGISTRY_BYTES} bytes")
            entry = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise _SourceError(f"{path}: not a readable JSON file: {exc}") from exc
        if not isinstance(entry, dict):
            raise _SourceError(f"{path}: expected a JSON object (one registry entry)")
        if "providers" in entry:
            raise _SourceError(
                f"{path} is a whole registry: pass it as --registry and name the entry by id"
            )
        return entry
    registry_path = registry or registry_path_from_env()
    try:
        provider = load_registry(registry_path).get(source)
    except RegistryError as exc:
        raise _SourceError(str(exc)) from exc
    if provider is None:
        raise _SourceError(f"{source!r} is neither a file nor an entry of {registry_path}")
    return provider.model_dump(mode="json")


def _from_manifest(args: argparse.Namespace) -> int:
    try:
        entry = _entry(args.source, args.registry)
    except _SourceError as exc:
        return fail("unusable", str(exc), args.json, status=EXIT_UNUSABLE)
    try:
        out = write_bundle(entry, args.out, category=args.category, plugin_id=args.id)
    except HttpManifestBundleError as exc:
        if not args.json:
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        message = "the entry cannot become a bundle"
        return fail(
            "invalid_entry", message, args.json, status=EXIT_PROBLEMS, problems=exc.problems
        )
    except OSError as exc:  # FileExistsError: --out is not empty
        return fail("not_written", str(exc), args.json, status=EXIT_PROBLEMS)
    try:
        manifest = load_manifest(out)
        digest = tree_digest(out)
    except (ManifestError, UnsafeTreeError, OSError) as exc:  # only a race gets here
        return fail("not_written", str(exc), args.json, status=EXIT_PROBLEMS)
    line = checksum_line(digest, checksum_name(out, args.checksums.parent))
    if args.json:
        written = {
            "id": manifest.id,
            "version": manifest.version,
            "path": str(out.resolve()),
            "tree_digest": digest,
            "checksums_line": line,
        }
        print_json({"written": written})
    else:
        print(f"wrote {manifest.id} {manifest.version} to {out}")
        print(f"to approve it, review it, then add to {args.checksums}:\n  {line}")
        print(f'and to allowlist.toml:\n  [[plugin]]\n  id = "{manifest.id}"')
    return EXIT_OK


def add_from_manifest_command(commands: Any) -> None:
    """Register `from-manifest` under `corral plugins`."""
    command = commands.add_parser(
        "from-manifest",
        help="write a bundle from a Faxbot HTTP-manifest registry entry",
        description="Convert a registry entry whose manifest declares HTTP `actions` (Faxbot's "
        "HTTP manifest) into a bundle directory: plugin.toml, provider.json and the entry module "
        "of the generic HTTP runtime. SOURCE is a JSON file holding one entry, or the id of an "
        "entry in the registry. The bundle is checked as a worker would load it before anything "
        "is written; it is not installed or approved: add its checksums.txt line (printed) and "
        "an allowlist.toml entry, then `corral plugins install` it.",
        epilog=exit_epilog(
            "the entry cannot become a valid bundle (each problem is listed), or --out is not "
            "empty",
            "SOURCE names no entry or cannot be read",
        ),
    )
    command.add_argument("source", metavar="REGISTRY_ID|FILE")
    command.add_argument(
        "--out", type=Path, required=True, help="the bundle directory to create (new or empty)"
    )
    command.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="the registry to look REGISTRY_ID up in (default: $CORRAL_PLUGIN_REGISTRY, else the "
        "shipped registry.json)",
    )
    command.add_argument(
        "--category",
        default=DEFAULT_CATEGORY,
        help=f"the bundle's category kind (default {DEFAULT_CATEGORY})",
    )
    command.add_argument(
        "--id",
        default=None,
        help="the plugin id (default: the entry's id when reverse-DNS, else local.http.<id>)",
    )
    command.add_argument(
        "--checksums",
        type=Path,
        default=DEFAULT_CHECKSUMS,
        help="the checksums file the printed line is for (default: the root checksums.txt)",
    )
    add_json_option(command)
    command.set_defaults(func=_from_manifest)
