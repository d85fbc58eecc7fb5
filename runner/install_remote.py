"""Remote install: the policy that gates it and a bounded https download.

Remote install is off unless `CORRAL_PLUGIN_INSTALL=true` (or its alias `FEATURE_PLUGIN_INSTALL`),
and always refused under the HIPAA profile (`CORRAL_PROFILE=hipaa`). Downloads are https only
(redirects included), capped in bytes and time, and hashed while written. What the bytes are
allowed to be is decided by the installer, exactly as for a local archive.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Protocol

import aiohttp
from yarl import URL

from .install_errors import InstallError, Reason

INSTALL_FLAGS: Final = ("CORRAL_PLUGIN_INSTALL", "FEATURE_PLUGIN_INSTALL")
PROFILE_VARIABLE: Final = "CORRAL_PROFILE"
HIPAA_PROFILE: Final = "hipaa"
MAX_REDIRECTS: Final = 5
_CHUNK: Final = 64 * 1024
_TRUE: Final = frozenset({"true", "1", "yes", "on"})


def remote_install_enabled(environ: Mapping[str, str]) -> bool:
    """Return whether `CORRAL_PLUGIN_INSTALL` (or `FEATURE_PLUGIN_INSTALL`) is true."""
    return any(environ.get(name, "").strip().lower() in _TRUE for name in INSTALL_FLAGS)


def profile_from_env(environ: Mapping[str, str]) -> str:
    """Return the deployment profile named by `CORRAL_PROFILE` (`default` when unset)."""
    return environ.get(PROFILE_VARIABLE, "").strip().lower() or "default"


def is_remote(source: str | Path) -> bool:
    """Return whether `source` is a URL rather than a local path."""
    return isinstance(source, str) and "://" in source


@dataclass(frozen=True, slots=True)
class RemotePolicy:
    """Whether and how bundles may be fetched over the network."""

    enabled: bool = False
    profile: str = "default"
    timeout_s: float = 60.0
    # Tests only: allow plain http to a loopback address, to test the download path itself.
    allow_loopback_http: bool = False

    def check(self, url: str) -> URL:
        """Return the parsed URL if a remote install from it may proceed; raise why not."""
        if self.profile == HIPAA_PROFILE:
            raise InstallError(
                Reason.REMOTE_INSTALL_FORBIDDEN,
                "remote install is always refused under the hipaa profile (CORRAL_PROFILE=hipaa); "
                "install from a local path instead",
                source=url,
            )
        if not self.enabled:
            raise InstallError(
                Reason.REMOTE_INSTALL_DISABLED,
                "remote install is off; set CORRAL_PLUGIN_INSTALL=true to allow it, or install "
                "from a local path",
                source=url,
            )
        return self.check_url(url)

    def check_url(self, url: str | URL) -> URL:
        """Return `url` parsed if its scheme and host are acceptable (https, or loopback http)."""
        try:
            parsed = URL(url) if isinstance(url, str) else url
        except ValueError as exc:
            raise InstallError(Reason.INSECURE_URL, f"not a URL: {exc}", source=str(url)) from exc
        if not parsed.host or parsed.user is not None or parsed.password is not None:
            raise InstallError(
                Reason.INSECURE_URL, "the URL needs a host and no credentials", source=str(url)
            )
        if parsed.scheme == "https":
            return parsed
        if parsed.scheme == "http" and self.allow_loopback_http and _is_loopback(parsed.host):
            return parsed
        raise InstallError(Reason.INSECURE_URL, "only https:// URLs are allowed", source=str(url))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_chunk(out: IO[bytes], digest: hashlib._Hash, chunk: bytes) -> None:
    out.write(chunk)
    digest.update(chunk)


async def download(url: str, dest: Path, policy: RemotePolicy, max_bytes: int) -> str:
    """Fetch `url` into the new file `dest`; return its sha256 hex.

    Follows at most MAX_REDIRECTS redirects, each checked like the original URL. Raises
    InstallError: too_large past `max_bytes`, download_failed on a network error, a non-200
    answer or when `policy.timeout_s` passes. A partial `dest` is left for the caller, which
    owns its directory, to remove.
    """
    digest = hashlib.sha256()
    out = await asyncio.to_thread(dest.open, "xb")
    try:
        async with asyncio.timeout(policy.timeout_s):
            await _fetch(url, policy, max_bytes, lambda c: _write_chunk(out, digest, c))
    except TimeoutError as exc:
        raise InstallError(
            Reason.DOWNLOAD_FAILED, f"no complete answer within {policy.timeout_s:g} s", source=url
        ) from exc
    finally:
        out.close()  # synchronous, so it also runs if the task is cancelled again meanwhile
    return digest.hexdigest()


async def fetch_optional(url: str, policy: RemotePolicy, max_bytes: int) -> bytes | None:
    """Return the body at `url`, or None when the server answers 404 (a missing signature)."""
    parts: list[bytes] = []
    try:
        async with asyncio.timeout(policy.timeout_s):
            found = await _fetch(url, policy, max_bytes, parts.append, missing_ok=True)
    except TimeoutError as exc:
        raise InstallError(
            Reason.DOWNLOAD_FAILED, f"no complete answer within {policy.timeout_s:g} s", source=url
        ) from exc
    return b"".join(parts) if found else None


async def _fetch(
    url: str,
    policy: RemotePolicy,
    max_bytes: int,
    write: _Write,
    *,
    missing_ok: bool = False,
) -> bool:
    target = policy.check_url(url)
    timeout = aiohttp.ClientTimeout(total=policy.timeout_s)
    headers = {"Accept-Encoding": "identity"}
    try:
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.get(target, allow_redirects=False, headers=headers) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = policy.check_url(target.join(URL(resp.headers["Location"])))
                        continue
                    if resp.status == 404 and missing_ok:
                        return False
                    if resp.status != 200:
                        raise InstallError(
                            Reason.DOWNLOAD_FAILED, f"the server answered {resp.status}", source=url
                        )
                    await _stream(resp, url, max_bytes, write)
                    return True
    except aiohttp.ClientError as exc:
        raise InstallError(
            Reason.DOWNLOAD_FAILED, str(exc) or type(exc).__name__, source=url
        ) from exc
    raise InstallError(Reason.DOWNLOAD_FAILED, f"more than {MAX_REDIRECTS} redirects", source=url)


async def _stream(resp: aiohttp.ClientResponse, url: str, max_bytes: int, write: _Write) -> None:
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise InstallError(Reason.TOO_LARGE, f"the download exceeds {max_bytes} bytes", source=url)
    received = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        received += len(chunk)
        if received > max_bytes:
            raise InstallError(
                Reason.TOO_LARGE, f"the download exceeds {max_bytes} bytes", source=url
            )
        await asyncio.to_thread(write, chunk)


class _Write(Protocol):
    def __call__(self, chunk: bytes, /) -> object: ...
