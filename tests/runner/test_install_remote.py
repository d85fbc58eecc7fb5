from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from runner.digest import tree_digest
from runner.install import Installer, InstallSettings
from runner.install_archive import ArchiveLimits
from runner.install_errors import InstallError, Reason
from runner.install_remote import profile_from_env, remote_install_enabled
from tests.fixtures.install.builders import (
    allow,
    bundle_files,
    checksums_for,
    installer,
    key_toml,
    new_key,
    sign,
    store_leftovers,
    write_dir,
    write_zip,
)


@dataclass
class Origin:
    """A plugin host on 127.0.0.1 that counts the requests it gets."""

    server: TestServer
    archive: bytes
    signature: bytes | None = None
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.archive).hexdigest()


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    archive = write_zip(tmp_path / "built.zip", bundle_files()).read_bytes()
    app = web.Application()
    state: dict[str, Origin] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        me = state["origin"]
        me.hits.append(request.path)
        name = request.match_info["name"]
        if name == "demo.zip":
            return web.Response(body=me.archive)
        if name == "demo.zip.sig" and me.signature is not None:
            return web.Response(body=me.signature)
        if name == "redirect.zip":
            raise web.HTTPFound("/demo.zip")
        if name == "redirect-away.zip":
            raise web.HTTPFound("http://plugins.example.com/demo.zip")
        if name == "slow.zip":
            await asyncio.sleep(30)
        if name == "endless.zip":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(256):
                await response.write(bytes(64 * 1024))
            return response
        raise web.HTTPNotFound()

    app.router.add_get("/{name}", handle)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        state["origin"] = Origin(server, archive)
        yield state["origin"]


def _installer(
    tmp_path: Path, origin: Origin, path: str, *, allowlist_top: str = "", **settings: object
) -> Installer:
    url = origin.url(path)
    checksums = checksums_for(tmp_path, url, digests={url: origin.sha256})
    options: dict[str, Any] = {"remote_install": True, "allow_loopback_http": True}
    options.update(settings)
    return installer(tmp_path, allow(top=allowlist_top), checksums, **options)


async def _refusal(inst: Installer, url: str) -> InstallError:
    with pytest.raises(InstallError) as info:
        await inst.install(url)
    assert await inst.installed() == []
    assert store_leftovers(inst.store.root) == [], "a refused download left files"
    return info.value


async def test_remote_install_is_off_by_default_and_says_how_to_enable_it(
    tmp_path: Path, origin: Origin
) -> None:
    inst = _installer(tmp_path, origin, "/demo.zip", remote_install=False)
    error = await _refusal(inst, origin.url("/demo.zip"))
    assert error.reason is Reason.REMOTE_INSTALL_DISABLED
    assert "CORRAL_PLUGIN_INSTALL=true" in error.message
    assert origin.hits == [] and not inst.store.root.exists()


async def test_the_hipaa_profile_refuses_remote_install_even_when_enabled(
    tmp_path: Path, origin: Origin
) -> None:
    inst = _installer(tmp_path, origin, "/demo.zip", profile="hipaa")
    error = await _refusal(inst, origin.url("/demo.zip"))
    assert error.reason is Reason.REMOTE_INSTALL_FORBIDDEN
    assert "hipaa" in error.message
    assert origin.hits == [] and not inst.store.root.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/demo.zip",
        "http://plugins.example.com/demo.zip",
        "ftp://plugins.example.com/demo.zip",
        "file:///etc/demo.zip",
        "https://user:secret@plugins.example.com/demo.zip",
    ],
)
async def test_only_https_urls_are_accepted(tmp_path: Path, url: str) -> None:
    checksums = checksums_for(tmp_path, url, digests={url: "0" * 64})
    inst = installer(tmp_path, allow(), checksums, remote_install=True)
    error = await _refusal(inst, url)
    assert error.reason is Reason.INSECURE_URL


async def test_an_enabled_remote_install_downloads_verifies_and_stores(
    tmp_path: Path, origin: Origin
) -> None:
    url = origin.url("/demo.zip")
    inst = _installer(tmp_path, origin, "/demo.zip")
    record = await inst.install(url)
    assert record.source == url and record.source_sha256 == origin.sha256

    assert record.digest == tree_digest(write_dir(tmp_path / "expected", bundle_files()))
    assert await inst.verify_for_spawn(record) == inst.path_of(record)
    assert origin.hits == ["/demo.zip"]  # no trusted keys: no signature is fetched


async def test_a_remote_signature_is_fetched_next_to_the_archive(
    tmp_path: Path, origin: Origin
) -> None:
    private, public = new_key()

    origin.signature = sign(private, tree_digest(write_dir(tmp_path / "x", bundle_files())))
    top = "require_signature = true\n" + key_toml("publisher", public)
    inst = _installer(tmp_path, origin, "/demo.zip", allowlist_top=top)
    record = await inst.install(origin.url("/demo.zip"))
    assert record.signed_by == "publisher"
    assert origin.hits == ["/demo.zip", "/demo.zip.sig"]


async def test_a_required_remote_signature_that_is_absent_is_refused(
    tmp_path: Path, origin: Origin
) -> None:
    _, public = new_key()
    top = "require_signature = true\n" + key_toml("publisher", public)
    inst = _installer(tmp_path, origin, "/demo.zip", allowlist_top=top)
    error = await _refusal(inst, origin.url("/demo.zip"))
    assert error.reason is Reason.SIGNATURE_MISSING


async def test_an_unlisted_url_is_refused_before_downloading(
    tmp_path: Path, origin: Origin
) -> None:
    inst = _installer(tmp_path, origin, "/other.zip")
    error = await _refusal(inst, origin.url("/demo.zip"))
    assert error.reason is Reason.CHECKSUM_MISSING
    assert origin.hits == []


async def test_a_download_that_differs_from_checksums_txt_is_refused(
    tmp_path: Path, origin: Origin
) -> None:
    inst = _installer(tmp_path, origin, "/demo.zip")
    origin.archive = write_zip(tmp_path / "v2.zip", bundle_files(version="1.0.1")).read_bytes()
    error = await _refusal(inst, origin.url("/demo.zip"))
    assert error.reason is Reason.CHECKSUM_MISMATCH


async def test_a_redirect_on_loopback_is_followed(tmp_path: Path, origin: Origin) -> None:
    inst = _installer(tmp_path, origin, "/redirect.zip")
    record = await inst.install(origin.url("/redirect.zip"))
    assert record.source == origin.url("/redirect.zip")
    assert origin.hits == ["/redirect.zip", "/demo.zip"]


async def test_a_redirect_to_plain_http_elsewhere_is_refused(
    tmp_path: Path, origin: Origin
) -> None:
    inst = _installer(tmp_path, origin, "/redirect-away.zip")
    error = await _refusal(inst, origin.url("/redirect-away.zip"))
    assert error.reason is Reason.INSECURE_URL


async def test_a_missing_remote_bundle_is_a_failed_download(tmp_path: Path, origin: Origin) -> None:
    inst = _installer(tmp_path, origin, "/gone.zip")
    error = await _refusal(inst, origin.url("/gone.zip"))
    assert error.reason is Reason.DOWNLOAD_FAILED and "404" in error.message


@pytest.mark.parametrize("path", ["/demo.zip", "/endless.zip"])
async def test_downloads_are_capped_in_size(tmp_path: Path, origin: Origin, path: str) -> None:
    origin.archive = bytes(2 * 1024 * 1024)  # announced by Content-Length
    limits = ArchiveLimits(max_archive_bytes=1024 * 1024)
    inst = _installer(tmp_path, origin, path, limits=limits)
    error = await _refusal(inst, origin.url(path))
    assert error.reason is Reason.TOO_LARGE


async def test_downloads_are_capped_in_time(tmp_path: Path, origin: Origin) -> None:
    inst = _installer(tmp_path, origin, "/slow.zip", download_timeout_s=0.3)
    error = await _refusal(inst, origin.url("/slow.zip"))
    assert error.reason is Reason.DOWNLOAD_FAILED and "0.3 s" in error.message


async def test_cancelling_a_download_leaves_nothing_behind(tmp_path: Path, origin: Origin) -> None:
    inst = _installer(tmp_path, origin, "/slow.zip")
    task = asyncio.create_task(inst.install(origin.url("/slow.zip")))
    while "/slow.zip" not in origin.hits:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store_leftovers(inst.store.root) == []
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@pytest.mark.parametrize(
    ("environ", "enabled", "profile"),
    [
        ({}, False, "default"),
        ({"CORRAL_PLUGIN_INSTALL": "true"}, True, "default"),
        ({"FEATURE_PLUGIN_INSTALL": "true"}, True, "default"),
        ({"CORRAL_PLUGIN_INSTALL": "false"}, False, "default"),
        ({"CORRAL_PLUGIN_INSTALL": "true", "CORRAL_PROFILE": "HIPAA"}, True, "hipaa"),
    ],
)
def test_settings_read_the_flag_and_the_profile_from_the_environment(
    tmp_path: Path, environ: dict[str, str], enabled: bool, profile: str
) -> None:
    assert remote_install_enabled(environ) is enabled
    assert profile_from_env(environ) == profile
    settings = InstallSettings.from_env(tmp_path, allow(), checksums_for(tmp_path), environ=environ)
    assert (settings.remote_install, settings.profile) == (enabled, profile)
