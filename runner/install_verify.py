"""Re-verification of installed plugins: is each store entry intact, and still allowed?

`entry_integrity` recomputes a store entry's tree digest (at start-up and before each spawn);
`entry_status` adds the allowlist, so a plugin the operator has since removed is not loaded.
Both block (they hash files): callers run them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .allowlist import Allowlist
from .digest import UnsafeTreeError, digests_equal, is_sha256_hex, skipped_dirs, tree_digest
from .install_errors import InstallError
from .install_policy import allowed_rule, read_manifest
from .install_store import InstalledPlugin, PluginStore

Status = Literal["ok", "modified", "missing", "revoked"]


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """The result of re-verifying one installed plugin; only `ok` ones may be loaded."""

    record: InstalledPlugin
    status: Status
    path: Path
    detail: str = ""

    @property
    def is_ok(self) -> bool:
        """Whether the plugin may be loaded."""
        return self.status == "ok"


def entry_integrity(store: PluginStore, record: InstalledPlugin) -> PluginStatus:
    """Return `ok`, `modified` or `missing` for the store entry of `record`.

    `modified` covers a changed, added or removed file, a link or special file, and a
    `__pycache__` directory (install never writes one, and the digest cannot see inside it).
    """
    if not is_sha256_hex(record.digest):
        return PluginStatus(record, "modified", store.root, "the record's digest is corrupt")
    path = store.path_for(record.digest)
    if path.is_symlink() or not path.is_dir():
        return PluginStatus(record, "missing", path, "the store entry is gone")
    try:
        planted = skipped_dirs(path)
        actual = tree_digest(path)
    except UnsafeTreeError as exc:
        return PluginStatus(record, "modified", path, str(exc))
    except OSError as exc:
        return PluginStatus(record, "modified", path, f"cannot read the entry: {exc}")
    if planted:
        return PluginStatus(record, "modified", path, f"{planted[0]}: added after install")
    if not digests_equal(record.digest, actual):
        return PluginStatus(record, "modified", path, f"the tree digest is now {actual}")
    return PluginStatus(record, "ok", path)


def entry_status(store: PluginStore, allowlist: Allowlist, record: InstalledPlugin) -> PluginStatus:
    """Return `entry_integrity`, or `revoked` when the allowlist no longer admits the plugin.

    Revoked: its id, version or digest is no longer allowed, or a signature is now required
    and it was not verified with a key trusted for it.
    """
    status = entry_integrity(store, record)
    if not status.is_ok:
        return status
    try:
        manifest = read_manifest(status.path, record.source)
        rule = allowed_rule(allowlist, manifest, record.digest, record.source)
    except InstallError as exc:
        return PluginStatus(record, "revoked", status.path, f"{exc.reason}: {exc.message}")
    if allowlist.signature_required(rule):
        trusted = {key.name for key in allowlist.keys_for(rule)}
        if record.signed_by not in trusted:
            detail = "allowlist.toml now requires a signature by a trusted key"
            return PluginStatus(record, "revoked", status.path, detail)
    return status
