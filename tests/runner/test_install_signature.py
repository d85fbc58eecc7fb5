from __future__ import annotations

import base64
from pathlib import Path

import pytest

from runner.digest import tree_digest
from runner.install_errors import InstallError, Reason
from runner.install_signature import signature_message, signature_path
from tests.fixtures.install.builders import (
    allow,
    bundle_files,
    checksums_for,
    installer,
    key_toml,
    new_key,
    sign,
    write_dir,
    write_tar_gz,
)


def test_the_signature_sits_next_to_the_bundle_and_covers_the_tree_digest() -> None:
    assert signature_path(Path("/srv/b/demo.zip")) == Path("/srv/b/demo.zip.sig")
    assert signature_path(Path("plugins/demo")) == Path("plugins/demo.sig")
    assert signature_message("ab" * 32) == b"corral-bundle-v1:" + b"ab" * 32


async def test_a_required_signature_by_a_trusted_key_is_accepted(tmp_path: Path) -> None:
    private, public = new_key()
    bundle = write_dir(tmp_path / "demo", bundle_files())
    signature_path(bundle).write_bytes(sign(private, tree_digest(bundle)))
    allowlist = allow(extra="require_signature = true", top=key_toml("publisher", public))
    inst = installer(tmp_path, allowlist, checksums_for(tmp_path, bundle))
    record = await inst.install(bundle)
    assert record.signed_by == "publisher"
    assert [s.status for s in await inst.verify_installed()] == ["ok"]


async def test_an_archive_signature_covers_its_tree_digest(tmp_path: Path) -> None:
    private, public = new_key()
    files = bundle_files()
    digest = tree_digest(write_dir(tmp_path / "unpacked", files))
    archive = write_tar_gz(tmp_path / "demo.tar.gz", files)
    signature_path(archive).write_bytes(sign(private, digest))
    allowlist = allow(top="require_signature = true\n" + key_toml("publisher", public))
    inst = installer(tmp_path, allowlist, checksums_for(tmp_path, archive))
    assert (await inst.install(archive)).signed_by == "publisher"


async def _refused(tmp_path: Path, bundle: Path, allowlist_top: str, extra: str) -> InstallError:
    inst = installer(
        tmp_path, allow(extra=extra, top=allowlist_top), checksums_for(tmp_path, bundle)
    )
    with pytest.raises(InstallError) as info:
        await inst.install(bundle)
    assert await inst.installed() == []
    return info.value


async def test_a_missing_required_signature_is_refused(tmp_path: Path) -> None:
    _, public = new_key()
    bundle = write_dir(tmp_path / "demo", bundle_files())
    error = await _refused(tmp_path, bundle, key_toml("k", public), "require_signature = true")
    assert error.reason is Reason.SIGNATURE_MISSING
    assert "demo.sig" in error.message


@pytest.mark.parametrize("case", ["untrusted key", "other digest", "garbage", "truncated"])
async def test_a_bad_signature_is_refused(tmp_path: Path, case: str) -> None:
    private, public = new_key()
    stranger, _ = new_key()
    bundle = write_dir(tmp_path / "demo", bundle_files())
    digest = tree_digest(bundle)
    content = {
        "untrusted key": sign(stranger, digest),
        "other digest": sign(private, "0" * 64),
        "garbage": b"this is not base64 !!!",
        "truncated": base64.b64encode(b"\0" * 63),
    }[case]
    signature_path(bundle).write_bytes(content)
    error = await _refused(tmp_path, bundle, key_toml("k", public), "require_signature = true")
    assert error.reason is Reason.SIGNATURE_INVALID


async def test_a_key_not_trusted_for_this_plugin_does_not_count(tmp_path: Path) -> None:
    private, public = new_key()
    _, other_public = new_key()
    bundle = write_dir(tmp_path / "demo", bundle_files())
    signature_path(bundle).write_bytes(sign(private, tree_digest(bundle)))
    top = key_toml("theirs", public) + key_toml("ours", other_public)
    error = await _refused(tmp_path, bundle, top, 'require_signature = true\nkeys = ["ours"]')
    assert error.reason is Reason.SIGNATURE_INVALID


async def test_a_present_signature_is_checked_even_when_not_required(tmp_path: Path) -> None:
    stranger, _ = new_key()
    _, public = new_key()
    bundle = write_dir(tmp_path / "demo", bundle_files())
    signature_path(bundle).write_bytes(sign(stranger, tree_digest(bundle)))
    error = await _refused(tmp_path, bundle, key_toml("k", public), "")
    assert error.reason is Reason.SIGNATURE_INVALID


async def test_an_unsigned_bundle_is_fine_when_no_signature_is_required(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, bundle))
    assert (await inst.install(bundle)).signed_by is None
