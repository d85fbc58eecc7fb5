"""Installed bundles shared through PostgreSQL: each tree stored once, by its digest.

`PgBundles.publish` packs a sealed store entry into a deterministic tar.gz and stores it in
`bundle_blobs` under the entry's tree digest (a second publish of the same tree stores nothing),
with the install record in `installed_bundles`, and `NOTIFY corral_bundles`. `fetch` brings an
entry to a host that lacks it: the archive's sha256 is checked, it is unpacked with the install
limits, and the tree committed to the local store only when its tree digest is the record's.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import logging
import tarfile
from pathlib import Path
from typing import Final

from ..digest import digests_equal, tree_digest, tree_files
from ..install_archive import ArchiveLimits, remove_tree, unpack
from ..install_errors import InstallError, Reason
from ..install_store import InstalledPlugin, PluginStore
from .connect import CONNECTION_ERRORS, Pool, unavailable

CHANNEL: Final = "corral_bundles"
_FIELDS: Final = "plugin_id, version, digest, source, source_sha256, signed_by, installed_at"
_log = logging.getLogger(__name__)


class PgBundles:
    """The `SharedBundles` of `runner.install_store`, in PostgreSQL.

    Raises StoreUnavailableError when the database cannot be reached.
    """

    def __init__(self, pool: Pool, url: str, limits: ArchiveLimits | None = None) -> None:
        self._pool = pool
        self._url = url
        self._limits = limits or ArchiveLimits()

    async def publish(self, record: InstalledPlugin, entry: Path) -> bool:
        """Store the tree at `entry` (unless stored) and `record`; return whether bytes moved."""
        try:
            async with self._pool.acquire() as conn:
                known = await conn.fetchval(
                    "SELECT 1 FROM bundle_blobs WHERE digest = $1", record.digest
                )
                archive = None if known else await asyncio.to_thread(pack_tree, entry)
                async with conn.transaction():
                    if archive is not None:
                        await conn.execute(
                            "INSERT INTO bundle_blobs (digest, archive, archive_sha256, "
                            "size_bytes) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            record.digest,
                            archive,
                            hashlib.sha256(archive).hexdigest(),
                            len(archive),
                        )
                    await conn.execute(
                        f"INSERT INTO installed_bundles ({_FIELDS}) VALUES "
                        "($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (plugin_id, version) DO UPDATE "
                        "SET digest = EXCLUDED.digest, source = EXCLUDED.source, "
                        "source_sha256 = EXCLUDED.source_sha256, signed_by = EXCLUDED.signed_by, "
                        "installed_at = EXCLUDED.installed_at",
                        *_values(record),
                    )
                    await conn.execute(
                        "SELECT pg_notify($1, $2)", CHANNEL, f"{record.plugin_id} {record.version}"
                    )
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc) from exc
        return archive is not None

    async def records(self) -> list[InstalledPlugin]:
        """Return every shared install record, sorted by (plugin id, version)."""
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    f"SELECT {_FIELDS} FROM installed_bundles ORDER BY plugin_id, version"
                )
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc) from exc
        return [InstalledPlugin(**dict(row)) for row in rows]

    async def fetch(self, record: InstalledPlugin, store: PluginStore) -> Path:
        """Materialize `record`'s tree in `store`, verified; return the entry's path.

        Raises InstallError `missing` when the database holds no such tree, and `modified`
        when the archive or the unpacked tree does not match its digest (nothing committed).
        """
        try:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT archive, archive_sha256 FROM bundle_blobs WHERE digest = $1",
                    record.digest,
                )
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc) from exc
        if row is None:
            raise InstallError(
                Reason.MISSING,
                f"no host stored the tree {record.digest}",
                plugin_id=record.plugin_id,
            )
        archive: bytes = row["archive"]
        if not digests_equal(row["archive_sha256"], hashlib.sha256(archive).hexdigest()):
            raise InstallError(
                Reason.MODIFIED,
                "the stored archive does not match its sha256",
                plugin_id=record.plugin_id,
            )
        path = await asyncio.to_thread(self._materialize, record, archive, store)
        _log.info(
            "materialized plugin %s %s (%s) from the database",
            record.plugin_id,
            record.version,
            record.digest,
        )
        return path

    async def forget(self, plugin_id: str, version: str) -> None:
        """Drop the shared record; the tree goes once no record names it."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                digest = await conn.fetchval(
                    "DELETE FROM installed_bundles WHERE plugin_id = $1 AND version = $2 "
                    "RETURNING digest",
                    plugin_id,
                    version,
                )
                if digest is not None:
                    await conn.execute(
                        "DELETE FROM bundle_blobs b WHERE digest = $1 AND NOT EXISTS "
                        "(SELECT 1 FROM installed_bundles i WHERE i.digest = b.digest)",
                        digest,
                    )
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{plugin_id} {version}")
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc) from exc

    def _materialize(self, record: InstalledPlugin, archive: bytes, store: PluginStore) -> Path:
        staging = store.new_staging()
        staging.mkdir(mode=0o700)
        try:
            packed = staging / "bundle.tar.gz"
            packed.write_bytes(archive)
            tree = staging / "tree"
            unpack(packed, "tar.gz", tree, self._limits)
            actual = tree_digest(tree)
            if not digests_equal(record.digest, actual):
                raise InstallError(
                    Reason.MODIFIED,
                    f"the stored tree's digest is {actual}, not {record.digest}",
                    plugin_id=record.plugin_id,
                )
            return store.commit(tree, record.digest)
        finally:
            remove_tree(staging)


def pack_tree(root: Path) -> bytes:
    """Return a deterministic tar.gz of the tree at `root`: regular files with their execute bit.

    Same tree, same bytes: names sorted, times, owners and other mode bits zeroed.
    """
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative, path, executable in tree_files(root):
            info = tarfile.TarInfo(relative)
            info.size = path.stat().st_size
            info.mode = 0o755 if executable else 0o644
            with path.open("rb") as data:
                tar.addfile(info, data)
    return buffer.getvalue()


def _values(record: InstalledPlugin) -> tuple[object, ...]:
    return (
        record.plugin_id,
        record.version,
        record.digest,
        record.source,
        record.source_sha256,
        record.signed_by,
        record.installed_at,
    )


__all__ = ["CHANNEL", "PgBundles", "pack_tree"]
