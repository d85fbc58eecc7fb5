"""Verified plugin install, start-up verification and the check just before a spawn.

`Installer` composes the pieces: the allowlist and checksums (operator policy), safe unpacking
(`install_archive`), signatures (`install_signature`), downloads (`install_remote`) and the
content-addressed store with its records (`install_store`). No plugin code runs here: the
manifest is read with tomllib only. docs/plugins.md describes the flow and every refusal.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from yarl import URL

from .allowlist import Allowlist
from .checksums import ChecksumEntry, Checksums
from .digest import is_sha256_hex, tree_digest
from .install_archive import (
    AbortedError,
    ArchiveLimits,
    BundleKind,
    bundle_kind,
    remove_tree,
    unpack,
)
from .install_errors import InstallError, Reason
from .install_policy import allowed_rule, check_signature, read_manifest, require_checksum
from .install_remote import (
    RemotePolicy,
    download,
    fetch_optional,
    is_remote,
    profile_from_env,
    remote_install_enabled,
)
from .install_signature import (
    MAX_SIGNATURE_FILE_BYTES,
    SIGNATURE_SUFFIX,
    read_signature_file,
    signature_path,
)
from .install_store import (
    INDEX_NAME,
    InstalledPlugin,
    JsonRecords,
    PluginRecords,
    PluginStore,
    SharedBundles,
)
from .install_verify import PluginStatus, entry_integrity, entry_status

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CHUNK: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class InstallSettings:
    """Operator configuration of install: where the store is and what policy applies."""

    store_dir: Path
    allowlist: Allowlist
    checksums: Checksums
    profile: str = "default"
    remote_install: bool = False
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    download_timeout_s: float = 60.0
    allow_loopback_http: bool = False  # tests only: lets the download path run against http

    @classmethod
    def from_env(
        cls,
        store_dir: Path,
        allowlist: Allowlist,
        checksums: Checksums,
        environ: Mapping[str, str] = os.environ,
    ) -> InstallSettings:
        """Build settings, reading the profile and the remote-install flag from `environ`."""
        return cls(
            store_dir=store_dir,
            allowlist=allowlist,
            checksums=checksums,
            profile=profile_from_env(environ),
            remote_install=remote_install_enabled(environ),
        )


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A bundle brought local: what to unpack, and what the checksums entry must match."""

    source: str
    kind: BundleKind
    path: Path  # the private archive copy, or the directory bundle itself
    archive_sha256: str | None
    entry: ChecksumEntry
    signature: bytes | None


class Installer:
    """Install bundles into the store and verify installed ones. One per host process."""

    def __init__(
        self,
        settings: InstallSettings,
        records: PluginRecords | None = None,
        shared: SharedBundles | None = None,
    ) -> None:
        self.settings = settings
        self.store = PluginStore(settings.store_dir)
        self.records = records or JsonRecords(settings.store_dir / INDEX_NAME)
        # Other hosts' installs (a database): published to, and fetched from on demand.
        self.shared = shared
        self._remote = RemotePolicy(
            enabled=settings.remote_install,
            profile=settings.profile,
            timeout_s=settings.download_timeout_s,
            allow_loopback_http=settings.allow_loopback_http,
        )
        self._lock = asyncio.Lock()
        # (stage, reason) of every refusal: "install", "startup", "spawn" or "fetch"; for metrics.
        self.refusals: collections.Counter[tuple[str, str]] = collections.Counter()

    def path_of(self, record: InstalledPlugin) -> Path:
        """Return the store directory of an installed plugin."""
        return self.store.path_for(record.digest)

    async def installed(self) -> list[InstalledPlugin]:
        """Return every install record, sorted by (plugin id, version)."""
        return await self.records.all()

    async def install(self, source: str | Path, *, uploaded: bool = False) -> InstalledPlugin:
        """Verify the bundle at `source` (a path or an https URL) and add it to the store.

        `uploaded`: `source` is an archive received over the admin API, whose name means
        nothing; its checksums.txt line is the archive entry with the same sha256 (a directory
        or URL line never matches an upload).

        Raises InstallError with the reason of the first check that fails; nothing is left in
        the store then. On cancellation the partial work is removed before CancelledError
        propagates. Installing an identical bundle again is harmless.
        """
        try:
            return await self._install(source, uploaded=uploaded)
        except InstallError as exc:
            self.refusals[("install", str(exc.reason))] += 1
            raise

    async def _install(self, source: str | Path, *, uploaded: bool) -> InstalledPlugin:
        # Checks that need neither the bundle's bytes nor the store come first, so a refusal
        # here has no side effect at all.
        if is_remote(source):
            url = str(source)
            self._remote.check(url)
            kind = _kind_from_name(URL(url).path, url)
            entry, local = self._entry(url), None
        else:
            local = await asyncio.to_thread(Path(source).resolve)
            kind = await asyncio.to_thread(bundle_kind, local)
            if uploaded and kind == "directory":
                raise InstallError(Reason.INVALID_BUNDLE, "an upload is a .zip or .tar.gz file")
            find = self._uploaded_entry if uploaded else self._entry
            entry = await asyncio.to_thread(find, local)
        work = await asyncio.to_thread(self.store.new_staging)
        abort = threading.Event()
        try:
            await asyncio.to_thread(work.mkdir, 0o700)
            if local is None:
                fetched = await self._download(str(source), kind, entry, work)
            else:
                fetched = await self._read_local(local, kind, entry, work, abort)
            async with self._lock:
                record = await _in_thread(lambda: self._stage(fetched, work, abort), abort)
                await self.records.put(record)
        except InstallError as exc:
            exc.source = exc.source or str(source)
            raise
        finally:
            await asyncio.to_thread(remove_tree, work)
        _log.info(
            "installed plugin %s %s from %s as %s",
            record.plugin_id,
            record.version,
            record.source,
            record.digest,
        )
        if self.shared is not None:
            await self.shared.publish(record, self.path_of(record))
        return record

    async def sync_shared(self) -> list[InstalledPlugin]:
        """Share every local install, and fetch every shared one this host lacks (verified).

        Returns the records fetched (now in the local store and records); loading them is a
        `Host.reload_trust`, which verifies them against this host's allowlist too. A shared
        tree that does not verify is skipped, loudly. Does nothing without `shared`.
        """
        if self.shared is None:
            return []
        local = {(r.plugin_id, r.version): r for r in await self.records.all()}
        shared = {(r.plugin_id, r.version): r for r in await self.shared.records()}
        for key, record in local.items():
            if shared.get(key) != record:
                await self.shared.publish(record, self.path_of(record))
        return await self._fetch_missing(shared, local)

    async def pull_shared(self) -> tuple[list[InstalledPlugin], list[InstalledPlugin]]:
        """Follow the shared records after another host installed or uninstalled a plugin.

        Fetches each shared record this host lacks (verified, as `sync_shared`) and drops each
        local record no longer shared (its entry goes once unused). Publishes nothing, so what
        another host removed never comes back. Returns (fetched, dropped); loading them is a
        `Host.refresh_plugins`. The caller keeps local installs from running meanwhile (a
        record installed but not yet published would be dropped).
        """
        if self.shared is None:
            return [], []
        shared = {(r.plugin_id, r.version): r for r in await self.shared.records()}
        async with self._lock:
            local = {(r.plugin_id, r.version): r for r in await self.records.all()}
            dropped = [r for key, r in local.items() if key not in shared]
            if dropped:
                await _uninterrupted(self._forget(dropped, share=False))
        for record in dropped:
            _log.info(
                "dropped plugin %s %s: uninstalled by another host",
                record.plugin_id,
                record.version,
            )
        return await self._fetch_missing(shared, local), dropped

    async def _fetch_missing(
        self,
        shared: dict[tuple[str, str], InstalledPlugin],
        local: dict[tuple[str, str], InstalledPlugin],
    ) -> list[InstalledPlugin]:
        fetched: list[InstalledPlugin] = []
        if self.shared is None:
            return fetched
        for key, record in shared.items():
            if key in local:
                continue
            try:
                await self.shared.fetch(record, self.store)
            except InstallError as exc:
                self.refusals[("fetch", str(exc.reason))] += 1
                _log.error("shared plugin %s %s not fetched: %s", *key, exc)
                continue
            await self.records.put(record)
            fetched.append(record)
        return fetched

    async def uninstall(self, plugin_id: str, version: str | None = None) -> list[InstalledPlugin]:
        """Remove the install record of (plugin_id, version), or of every version when None.

        Returns the removed records, ordered as `installed()` lists them. A store entry goes
        once no remaining record refers to its digest. Raises InstallError with reason
        `not_installed` when nothing matches. Once started, removal runs to the end even if
        the caller is cancelled (CancelledError is raised afterwards), so records and store
        stay consistent. Stopping workers that still run from the entry is the caller's job.
        """
        async with self._lock:
            doomed = [
                r
                for r in await self.records.all()
                if r.plugin_id == plugin_id and version in (None, r.version)
            ]
            if not doomed:
                which = plugin_id if version is None else f"{plugin_id} {version}"
                raise InstallError(
                    Reason.NOT_INSTALLED, f"{which} is not installed", plugin_id=plugin_id
                )
            await _uninterrupted(self._forget(doomed))
        for record in doomed:
            _log.info("uninstalled plugin %s %s (%s)", plugin_id, record.version, record.digest)
        return doomed

    async def _forget(self, doomed: list[InstalledPlugin], *, share: bool = True) -> None:
        # Records go first: a crash between the steps leaves an unreferenced entry (wasted
        # space, reused by a reinstall), never a record whose entry is gone.
        for record in doomed:
            await self.records.remove(record.plugin_id, record.version)
            if share and self.shared is not None:
                await self.shared.forget(record.plugin_id, record.version)
        in_use = {r.digest for r in await self.records.all()}
        for digest in sorted({r.digest for r in doomed} - in_use):
            if not is_sha256_hex(digest):  # a corrupt record: its entry cannot be named safely
                _log.warning("uninstall left the store untouched for a corrupt digest record")
                continue
            await asyncio.to_thread(self.store.remove_entry, digest)

    async def _download(
        self, url: str, kind: BundleKind, entry: ChecksumEntry, work: Path
    ) -> _Fetched:
        archive = work / ("bundle.zip" if kind == "zip" else "bundle.tar.gz")
        sha = await download(url, archive, self._remote, self.settings.limits.max_archive_bytes)
        signature = None
        if self.settings.allowlist.key:
            signature = await fetch_optional(
                url + SIGNATURE_SUFFIX, self._remote, MAX_SIGNATURE_FILE_BYTES + 1
            )
        return _Fetched(url, kind, archive, sha, entry, signature)

    async def _read_local(
        self, path: Path, kind: BundleKind, entry: ChecksumEntry, work: Path, abort: threading.Event
    ) -> _Fetched:
        signature = await asyncio.to_thread(read_signature_file, signature_path(path))
        if kind == "directory":
            return _Fetched(str(path), kind, path, None, entry, signature)
        copy = work / ("bundle.zip" if kind == "zip" else "bundle.tar.gz")
        limit = self.settings.limits.max_archive_bytes
        sha = await _in_thread(lambda: _copy_hashing(path, copy, limit, abort), abort)
        return _Fetched(str(path), kind, copy, sha, entry, signature)

    def _entry(self, source: str | Path) -> ChecksumEntry:
        entry = self.settings.checksums.lookup(source)
        if entry is None:
            raise InstallError(
                Reason.CHECKSUM_MISSING,
                "checksums.txt has no line for this bundle; run `corral plugins checksum "
                f"{source}` and review the bundle before adding its line",
                source=str(source),
            )
        return entry

    def _uploaded_entry(self, path: Path) -> ChecksumEntry:
        sha = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
        digest = sha.hexdigest()
        for entry in self.settings.checksums.entries:
            name = entry.name.lower()
            if entry.sha256 == digest and name.endswith((".zip", ".tar.gz", ".tgz")):
                return entry
        raise InstallError(
            Reason.CHECKSUM_MISSING,
            "no archive line in checksums.txt has this upload's sha256; review the bundle and "
            "add its line (`corral plugins checksum <file>`) first",
            source="upload",
        )

    def _stage(self, fetched: _Fetched, work: Path, abort: threading.Event) -> InstalledPlugin:
        """Check and unpack `fetched`, then commit it to the store (blocking)."""
        source = fetched.source
        if fetched.archive_sha256 is not None:
            require_checksum(fetched.entry, fetched.archive_sha256, source)
        tree = work / "tree"
        unpack(fetched.path, fetched.kind, tree, self.settings.limits, abort)
        digest = tree_digest(tree)
        if fetched.archive_sha256 is None:
            require_checksum(fetched.entry, digest, source)
        manifest = read_manifest(tree, source)
        rule = allowed_rule(self.settings.allowlist, manifest, digest, source)
        signed_by = check_signature(
            self.settings.allowlist, rule, digest, fetched.signature, source
        )
        self.store.commit(tree, digest)
        return InstalledPlugin(
            plugin_id=manifest.id,
            version=manifest.version,
            digest=digest,
            source=source,
            source_sha256=fetched.archive_sha256 or digest,
            signed_by=signed_by,
            installed_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )

    async def verify_installed(self) -> list[PluginStatus]:
        """Re-verify every installed plugin (at start-up); load only those with status `ok`.

        `modified`: the store entry no longer matches its digest (or holds a link, a special
        file or a `__pycache__`); `missing`: it is gone; `revoked`: the allowlist no longer
        allows it. Also removes staging left behind by a crashed install.
        """
        await asyncio.to_thread(self.store.remove_stale)
        statuses: list[PluginStatus] = []
        for record in await self.records.all():
            status = await asyncio.to_thread(
                entry_status, self.store, self.settings.allowlist, record
            )
            if not status.is_ok:
                self.refusals[("startup", status.status)] += 1
                _log.warning(
                    "installed plugin %s %s is %s and will not be loaded: %s",
                    record.plugin_id,
                    record.version,
                    status.status,
                    status.detail,
                )
            statuses.append(status)
        return statuses

    async def verify_for_spawn(self, installed: InstalledPlugin) -> Path:
        """Recompute the store entry's digest just before a spawn; return the entry's path.

        Raises InstallError with reason `modified` or `missing`. An entry this host lacks is
        first fetched from `shared` (when set), then verified here like any other.
        """
        status = await asyncio.to_thread(entry_integrity, self.store, installed)
        if status.status == "missing" and self.shared is not None:
            await self.shared.fetch(installed, self.store)
            status = await asyncio.to_thread(entry_integrity, self.store, installed)
        if status.status != "ok":
            self.refusals[("spawn", status.status)] += 1
            raise InstallError(
                Reason(status.status),
                status.detail,
                source=str(status.path),
                plugin_id=installed.plugin_id,
            )
        return status.path


async def _in_thread(work: Callable[[], _T], abort: threading.Event) -> _T:
    """Run `work` in a thread; on cancellation ask it to stop and wait until it has.

    Waiting keeps the cleanup in the caller's `finally` from racing the thread's writes.
    """
    future = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        abort.set()
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so it is not reported as never retrieved
        raise


async def _uninterrupted(work: Coroutine[object, object, _T]) -> _T:
    """Run `work` to its end even if the caller is cancelled meanwhile, then re-raise that."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so it is not reported as never retrieved
        raise


def _kind_from_name(name: str, source: str) -> BundleKind:
    lowered = name.lower()
    if lowered.endswith(".zip"):
        return "zip"
    if lowered.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    raise InstallError(
        Reason.INVALID_BUNDLE, "a remote bundle is a .zip or a .tar.gz", source=source
    )


def _copy_hashing(source: Path, dest: Path, max_bytes: int, abort: threading.Event) -> str:
    """Copy an archive to a private file while hashing it, so what is checked is what is read."""
    digest = hashlib.sha256()
    copied = 0
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src, dest.open("xb") as out:
        while chunk := src.read(_CHUNK):
            if abort.is_set():
                raise AbortedError
            copied += len(chunk)
            if copied > max_bytes:
                raise InstallError(
                    Reason.TOO_LARGE,
                    f"the archive is larger than {max_bytes} bytes",
                    source=str(source),
                )
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
