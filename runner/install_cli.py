"""The `corral plugins install|checksum|verify` commands; `runner.cli` registers them.

Exit codes: 0 success; 1 a bundle was refused, failed verification or could not be digested;
2 usage errors, or allowlist.toml, checksums.txt or the store's index is invalid. Installing
several bundles and verifying the store show `[i/n] id ... outcome` on a terminal's stderr.
"""

from __future__ import annotations

import argparse
import asyncio
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
from .cli_common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNUSABLE,
    Progress,
    add_json_option,
    exit_epilog,
    fail,
    print_json,
)
from .digest import UnsafeTreeError, tree_digest
from .install import Installer, InstallSettings
from .install_archive import ArchiveLimits, bundle_kind, unpack
from .install_errors import InstallError
from .install_store import InstalledPlugin, RecordsError
from .install_verify import PluginStatus, entry_status
from .paths import default_store_dir

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_ALLOWLIST: Final = ROOT / "allowlist.toml"
DEFAULT_CHECKSUMS: Final = ROOT / "checksums.txt"
EXIT_REFUSED: Final = EXIT_PROBLEMS
EXIT_BAD_POLICY: Final = EXIT_UNUSABLE


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
    return fail("invalid_policy", str(exc), as_json, status=EXIT_BAD_POLICY)


def _install(args: argparse.Namespace) -> int:
    try:
        installer = _installer(args, with_checksums=True)
    except (AllowlistError, ChecksumsError) as exc:
        return _policy_error(exc, args.json)
    try:
        results = asyncio.run(_install_all(installer, args.sources, args.json))
    except RecordsError as exc:
        return _policy_error(exc, args.json)
    if args.json:
        print_json(
            results[0] if len(results) == 1 else {"results": results, "ok": _all_ok(results)}
        )
    return EXIT_OK if _all_ok(results) else EXIT_REFUSED


def _all_ok(results: list[dict[str, Any]]) -> bool:
    return all("installed" in r for r in results)


async def _install_all(
    installer: Installer, sources: list[str], as_json: bool
) -> list[dict[str, Any]]:
    """Install each source in turn; a refusal does not stop the others."""
    progress = Progress(len(sources), as_json=as_json)
    results: list[dict[str, Any]] = []
    for source in sources:
        try:
            record = await installer.install(source)
        except InstallError as exc:
            results.append({"source": source, "refused": exc.to_dict()})
            progress.step(exc.plugin_id or source, f"refused ({exc.reason})")
            if not as_json:
                _print_refusal(source, exc, several=len(sources) > 1)
            continue
        path = installer.path_of(record)
        results.append({"source": source, "installed": _record_json(record, path)})
        progress.step(record.plugin_id, "ok")
        if not as_json:
            print(f"installed {record.plugin_id} {record.version} ({record.digest}) at {path}")
    return results


def _print_refusal(source: str, exc: InstallError, *, several: bool) -> None:
    where = f"{source}: " if several else ""
    print(f"{where}refused ({exc.reason}): {exc.message}", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    if exc.member is not None:
        print(f"  member: {exc.member}", file=sys.stderr)


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
        print_json({"checksums": results})
    return EXIT_REFUSED if failed else EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    try:
        installer = _installer(args, with_checksums=False)
    except AllowlistError as exc:
        return _policy_error(exc, args.json)
    try:
        statuses = asyncio.run(_verify_all(installer, args.json))
    except RecordsError as exc:
        return _policy_error(exc, args.json)
    is_ok = all(s.is_ok for s in statuses)
    if args.json:
        rows = [
            {**_record_json(s.record, s.path), "status": s.status, "detail": s.detail}
            for s in statuses
        ]
        print_json({"plugins": rows, "ok": is_ok})
    else:
        for s in statuses:
            detail = f"  {s.detail}" if s.detail else ""
            print(f"{s.status:9} {s.record.plugin_id:40} {s.record.version:12}{detail}")
        if not statuses:
            print(f"no plugins installed in {installer.store.root}")
    return EXIT_OK if is_ok else EXIT_REFUSED


async def _verify_all(installer: Installer, as_json: bool) -> list[PluginStatus]:
    """Re-verify each installed plugin as `Installer.verify_installed` does, one step at a time."""
    await asyncio.to_thread(installer.store.remove_stale)
    records = await installer.installed()
    progress = Progress(len(records), as_json=as_json)
    statuses: list[PluginStatus] = []
    for record in records:
        status = await asyncio.to_thread(
            entry_status, installer.store, installer.settings.allowlist, record
        )
        progress.step(f"{record.plugin_id} {record.version}", status.status)
        statuses.append(status)
    return statuses


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
    add_json_option(parser)


def add_install_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `install`, `checksum` and `verify` under `corral plugins`."""
    install = commands.add_parser(
        "install",
        help="verify a bundle and add it to the plugin store",
        description="Check each bundle (directory, .zip, .tar.gz, or an https URL when "
        "CORRAL_PLUGIN_INSTALL=true) against checksums.txt and allowlist.toml, unpack it safely "
        "and add it to the read-only store. A refused bundle does not stop the others; with "
        "several, a terminal shows [i/n] progress on stderr. A running corral serve loads what "
        "is installed here at its next start or reload (the admin API installs and loads at once).",
        epilog=exit_epilog(
            "a bundle was refused (the reason is printed)",
            "allowlist.toml, checksums.txt or the store's index.json is invalid",
        ),
    )
    install.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="a bundle path, or an https:// URL"
    )
    _policy_options(install, checksums=True)
    install.set_defaults(func=_install)

    checksum = commands.add_parser(
        "checksum",
        help="print checksums.txt lines for bundles",
        description="Print one checksums.txt line per bundle: the tree digest of a directory, "
        "the sha256 of an archive, named relative to the checksums file. --json also gives an "
        "archive's tree digest (what allowlist.toml pins and signatures cover).",
        epilog=exit_epilog(
            "a bundle cannot be digested (a link, a special file, an unsafe archive)"
        ),
    )
    checksum.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    checksum.add_argument(
        "--checksums",
        type=Path,
        default=DEFAULT_CHECKSUMS,
        help="the checksums file the lines are for (names are relative to its directory)",
    )
    add_json_option(checksum)
    checksum.set_defaults(func=_checksum)

    verify = commands.add_parser(
        "verify",
        help="re-verify every installed plugin",
        description="Recompute the digest of every store entry and re-check it against "
        "allowlist.toml; with several entries, a terminal shows [i/n] progress on stderr.",
        epilog=exit_epilog(
            "an entry is modified, missing or revoked",
            "allowlist.toml or the store's index.json is invalid",
        ),
    )
    _policy_options(verify, checksums=False)
    verify.set_defaults(func=_verify)
