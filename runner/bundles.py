"""Discover plugin bundles in a directory and read their manifests (no plugin code runs).

Install and verification (checksums, allowlist) build on this; here a bundle is only a directory
with a valid plugin.toml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol import Manifest, ManifestError, load_manifest
from protocol.manifest import MANIFEST_NAME


@dataclass(frozen=True, slots=True)
class Bundle:
    """A plugin bundle on disk and its validated manifest."""

    path: Path
    manifest: Manifest


@dataclass(frozen=True, slots=True)
class BundleProblem:
    """A directory that looks like a bundle but whose manifest is invalid."""

    path: Path
    error: ManifestError


def discover(root: Path) -> tuple[list[Bundle], list[BundleProblem]]:
    """Return the bundles directly under `root` (sorted by id) and the ones that failed to load."""
    bundles: list[Bundle] = []
    problems: list[BundleProblem] = []
    for manifest_path in sorted(root.glob(f"*/{MANIFEST_NAME}")):
        try:
            bundles.append(Bundle(manifest_path.parent, load_manifest(manifest_path)))
        except ManifestError as exc:
            problems.append(BundleProblem(manifest_path.parent, exc))
    bundles.sort(key=lambda b: b.manifest.id)
    return bundles, problems
