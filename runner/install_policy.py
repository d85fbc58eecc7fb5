"""The install-time policy checks: checksums, manifest, allowlist (ids, versions, pins), signatures.

Pure functions over parsed operator policy and an unpacked bundle; each refusal is an
`InstallError` with its reason. Fetching, unpacking and storing bundles is `runner.install`'s job.
"""

from __future__ import annotations

from pathlib import Path

from protocol import Manifest, ManifestError, load_manifest
from protocol.manifest import MANIFEST_NAME

from .allowlist import Allowlist, PluginRule
from .checksums import ChecksumEntry
from .digest import digests_equal
from .install_errors import InstallError, Reason
from .install_signature import SIGNATURE_SUFFIX, verify_signature


def require_checksum(entry: ChecksumEntry, actual: str, source: str) -> None:
    """Raise checksum_mismatch unless `actual` equals the entry's digest (constant time)."""
    if not digests_equal(entry.sha256, actual):
        raise InstallError(
            Reason.CHECKSUM_MISMATCH,
            f"the bundle's digest is {actual}, but checksums.txt line {entry.line} says "
            f"{entry.sha256}",
            source=source,
        )


def read_manifest(tree: Path, source: str) -> Manifest:
    """Return the validated manifest at the root of an unpacked bundle (tomllib only).

    Raises invalid_manifest with `problems` naming each field path.
    """
    if not (tree / MANIFEST_NAME).is_file():
        nested = sorted(p.parent.name for p in tree.glob(f"*/{MANIFEST_NAME}"))
        hint = f" (found one in {nested[0]}/: pack the bundle's contents, not its folder)"
        raise InstallError(
            Reason.INVALID_MANIFEST,
            f"no {MANIFEST_NAME} at the bundle root" + (hint if nested else ""),
            source=source,
            problems=[f"$: no {MANIFEST_NAME} at the bundle root"],
        )
    try:
        return load_manifest(tree / MANIFEST_NAME)
    except ManifestError as exc:
        raise InstallError(
            Reason.INVALID_MANIFEST, "; ".join(exc.problems), source=source, problems=exc.problems
        ) from exc


def allowed_rule(allowlist: Allowlist, manifest: Manifest, digest: str, source: str) -> PluginRule:
    """Return the allowlist rule admitting this plugin, version and tree digest.

    Raises not_allowlisted, version_not_allowed or pinned_digest_mismatch.
    """
    rule = allowlist.rule(manifest.id)
    if rule is None:
        raise InstallError(
            Reason.NOT_ALLOWLISTED,
            f"plugin {manifest.id!r} is not in allowlist.toml",
            source=source,
            plugin_id=manifest.id,
        )
    if not rule.allows_version(manifest.version):
        raise InstallError(
            Reason.VERSION_NOT_ALLOWED,
            f"version {manifest.version} is outside the allowed range {rule.versions}",
            source=source,
            plugin_id=manifest.id,
        )
    if rule.digests and not any(digests_equal(pin, digest) for pin in rule.digests):
        raise InstallError(
            Reason.PINNED_DIGEST_MISMATCH,
            f"tree digest {digest} is not one of the digests allowlist.toml pins",
            source=source,
            plugin_id=manifest.id,
        )
    return rule


def check_signature(
    allowlist: Allowlist, rule: PluginRule, digest: str, signature: bytes | None, source: str
) -> str | None:
    """Return the name of the key that signed the bundle, or None when unsigned and allowed.

    A signature is checked when the allowlist requires one, and also when one is present and
    the plugin has trusted keys. Raises signature_missing or signature_invalid.
    """
    keys = allowlist.keys_for(rule)
    if signature is None:
        if allowlist.signature_required(rule):
            raise InstallError(
                Reason.SIGNATURE_MISSING,
                f"allowlist.toml requires a signature: {source}{SIGNATURE_SUFFIX} is missing",
                source=source,
                plugin_id=rule.id,
            )
        return None
    if not keys:  # a signature nobody asked for, with no key to check it: ignored
        return None
    try:
        return verify_signature(digest, signature, keys)
    except InstallError as exc:
        exc.source, exc.plugin_id = source, rule.id
        raise
