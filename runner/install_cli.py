"""The `corral plugins install|checksum|verify` commands; `runner.cli` registers them.

Exit codes: 0 success; 1 a bundle was refused, failed verification or could not be digested;
2 usage errors (argparse); 3 allowlist.toml, checksums.txt or the store's index is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from .allowlist import AllowlistError, load_allowlist
from .checksums import (
    Checksums,
    ChecksumsError,
    bundle_checksum,
    checksum_line,
    checksum_name,
    load_checksums,
)
from .digest import UnsafeTreeError, tree_digest
from .install import Installer, InstallSettings
from .install_archive import ArchiveLimits, bundle_kind, unpack
from .install_errors import InstallError
from .install_store import InstalledPlugin, RecordsError
from .paths import default_store_dir

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_ALLOWLIST: Final = ROOT / "allowlist.toml"
DEFAULT_CHECKSUMS: Final = ROOT / "checksums.txt"
EXIT_REFUSED: Final = 1
EXIT_BAD_POLICY: Final = 3


def default_store() -> Path:
    """Return the store the host loads from: `<state dir>/store` (see `runner.paths`)."""
    return default_store_dir()


def _record_json(record: InstalledPlugin, path: Path) -> dict[str, Any]:
    return {
        "id": record.plugin_id,
        "version": record.version,
        "digest": record.digest,
        "path": str(path),
        "source": record.source,
        "source_sha256": record.source_sha256,
        "signed_by": record.signed_by,
        "installed_at": record.installed_at,
    }


def _installer(args: argparse.Namespace, *, with_checksums: bool) -> Installer:
    allowlist = load_allowlist(args.allowlist)
    checksums = load_checksums(args.checksums) if with_checksums else Checksums(Path.cwd())
    return Installer(InstallSettings.from_env(args.store, allowlist, checksums))


def _policy_error(exc: AllowlistError | ChecksumsError | RecordsError, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": "invalid_policy", "message": str(exc)}))
    else:
        print(f"corral: {exc}", file=sys.stderr)
    return EXIT_BAD_POLICY


def _install(args: argparse.Namespace) -> int:
    try:
        installer = _installer(args, with_checksums=True)
    except (AllowlistError, ChecksumsError) as exc:
        return _policy_error(exc, args.json)
    try:
        record = asyncio.run(installer.install(args.source))
    except RecordsError as exc:
        return _policy_error(exc, args.json)
    except InstallError as exc:
        if args.json:
            print(json.dumps({"refused": exc.to_dict()}))
        else:
            print(f"refused ({exc.reason}): {exc.message}", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            if exc.member is not None:
                print(f"  member: {exc.member}", file=sys.stderr)
        return EXIT_REFUSED
    path = installer.path_of(record)
    if args.json:
        print(json.dumps({"installed": _record_json(record, path)}))
    else:
        print(f"installed {record.plugin_id} {record.version} ({record.digest}) at {path}")
    return 0


def _digests(path: Path) -> dict[str, str]:
    kind = bundle_kind(path)
    value = bundle_checksum(path)
    if kind == "directory":
        return {"kind": kind, "sha256": value, "tree_digest": value}
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        unpack(path, kind, tree, ArchiveLimits())
        return {"kind": kind, "sha256": value, "tree_digest": tree_digest(tree)}


def _checksum(args: argparse.Namespace) -> int:
    base_dir = args.checksums.parent
    results: list[dict[str, str]] = []
    failed = False
    for path in args.paths:
        name = checksum_name(path, base_dir)
        try:
            digests = _digests(path.resolve())
        except (InstallError, UnsafeTreeError, OSError) as exc:
            failed = True
            results.append({"name": name, "error": str(exc)})
            if not args.json:
                print(f"corral: {path}: {exc}", file=sys.stderr)
            continue
        results.append({"name": name, **digests})
        if not args.json:
            print(checksum_line(digests["sha256"], name))
    if args.json:
        print(json.dumps({"checksums": results}))
    return EXIT_REFUSED if failed else 0


def _verify(args: argparse.Namespace) -> int:
    try:
        installer = _installer(args, with_checksums=False)
    except AllowlistError as exc:
        return _policy_error(exc, args.json)
    try:
        statuses = asyncio.run(installer.verify_installed())
    except RecordsError as exc:
        return _policy_error(exc, args.json)
    if args.json:
        rows = [
            {**_record_json(s.record, s.path), "status": s.status, "detail": s.detail}
            for s in statuses
        ]
        print(json.dumps({"plugins": rows, "ok": all(s.is_ok for s in statuses)}))
    else:
        for s in statuses:
            detail = f"  {s.detail}" if s.detail else ""
            print(f"{s.status:9} {s.record.plugin_id:40} {s.record.version:12}{detail}")
        if not statuses:
            print(f"no plugins installed in {installer.store.root}")
    return 0 if all(s.is_ok for s in statuses) else EXIT_REFUSED


def _policy_options(parser: argparse.ArgumentParser, *, checksums: bool) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        default=default_store(),
        help="the plugin store (default: <state dir>/store, the one `corral serve` loads; "
        "state dir from $CORRAL_STATE_DIR, /var/lib/corral as root, else ~/.local/state/corral)",
    )
    parser.add_argument(
        "--allowlist", type=Path, default=DEFAULT_ALLOWLIST, help="default: the root allowlist.toml"
    )
    if checksums:
        parser.add_argument(
            "--checksums",
            type=Path,
            default=DEFAULT_CHECKSUMS,
            help="default: the root checksums.txt",
        )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_install_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `install`, `checksum` and `verify` under `corral plugins`."""
    install = commands.add_parser(
        "install",
        help="verify a bundle and add it to the plugin store",
        description="Check a bundle (directory, .zip, .tar.gz, or an https URL when "
        "CORRAL_PLUGIN_INSTALL=true) against checksums.txt and allowlist.toml, unpack it safely "
        "and add it to the read-only store. Exit 1 with the refusal reason if it is refused, "
        "3 if a policy file is invalid.",
    )
    install.add_argument("source", help="a bundle path, or an https:// URL")
    _policy_options(install, checksums=True)
    install.set_defaults(func=_install)

    checksum = commands.add_parser(
        "checksum",
        help="print checksums.txt lines for bundles",
        description="Print one checksums.txt line per bundle: the tree digest of a directory, "
        "the sha256 of an archive, named relative to the checksums file. --json also gives an "
        "archive's tree digest (what allowlist.toml pins and signatures cover). Exit 1 if a "
        "bundle cannot be digested (a link, a special file, an unsafe archive).",
    )
    checksum.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    checksum.add_argument(
        "--checksums",
        type=Path,
        default=DEFAULT_CHECKSUMS,
        help="the checksums file the lines are for (names are relative to its directory)",
    )
    checksum.add_argument("--json", action="store_true", help="machine-readable output")
    checksum.set_defaults(func=_checksum)

    verify = commands.add_parser(
        "verify",
        help="re-verify every installed plugin",
        description="Recompute the digest of every store entry and re-check it against "
        "allowlist.toml. Exit 1 if any is modified, missing or revoked.",
    )
    _policy_options(verify, checksums=False)
    verify.set_defaults(func=_verify)
