from __future__ import annotations

import os
import stat
import struct
import tarfile
import threading
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from runner.install_archive import AbortedError, ArchiveLimits, member_path, unpack
from runner.install_errors import InstallError, Reason
from tests.fixtures.install.builders import (
    allow,
    bundle_files,
    checksums_for,
    installer,
    store_leftovers,
    tar_member,
    write_dir,
    write_tar_gz,
    write_zip,
)


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def _refused(
    tmp_path: Path, archive: Path, limits: ArchiveLimits | None = None
) -> InstallError:
    """Install an approved (checksummed, allowlisted) archive and return its refusal."""
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, archive), limits=limits)
    with pytest.raises(InstallError) as info:
        await inst.install(archive)
    assert store_leftovers(tmp_path / "store") == [], "a refused bundle left files behind"
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    return info.value


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plugin.toml", PurePosixPath("plugin.toml")),
        ("./lib//x.py", PurePosixPath("lib/x.py")),
        ("lib/", PurePosixPath("lib")),
        ("./", None),
    ],
)
def test_member_path_accepts_plain_relative_names(
    name: str, expected: PurePosixPath | None
) -> None:
    assert member_path(name) == expected


@pytest.mark.parametrize(
    "name", ["../x", "lib/../../x", "/abs/x", "/", "C:/x", "lib\\..\\x", "a\0b", ""]
)
def test_member_path_refuses_escapes(name: str) -> None:
    with pytest.raises(InstallError) as info:
        member_path(name)
    assert info.value.reason is Reason.UNSAFE_ARCHIVE and info.value.member == name


@pytest.mark.parametrize("name", ["../x", "lib/../../x", "/abs/x"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
async def test_path_traversal_is_refused(tmp_path: Path, kind: str, name: str) -> None:
    files = bundle_files() | {name: b"escaped"}
    archive = tmp_path / f"evil.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for member, data in files.items():
                z.writestr(zipfile.ZipInfo(member), data)  # ZipInfo keeps the name as given
    else:
        write_tar_gz(archive, files)
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.UNSAFE_ARCHIVE and error.member == name
    assert not _exists("/abs/x")


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (dict(type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symlinks"),
        (dict(type=tarfile.LNKTYPE, linkname="plugin.toml"), "hardlinks"),
        (dict(type=tarfile.CHRTYPE, devmajor=1, devminor=3), "device"),
        (dict(type=tarfile.BLKTYPE, devmajor=8, devminor=0), "device"),
        (dict(type=tarfile.FIFOTYPE), "FIFO"),
    ],
)
async def test_links_devices_and_fifos_in_a_tar_are_refused(
    tmp_path: Path, member: dict[str, object], words: str
) -> None:
    archive = write_tar_gz(
        tmp_path / "evil.tar.gz",
        bundle_files(),
        extra=[tar_member("lib/special", attributes=member)],
    )
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.UNSAFE_ARCHIVE
    assert error.member == "lib/special" and words in error.message


async def test_a_symlink_in_a_zip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in bundle_files().items():
            z.writestr(name, data)
        link = zipfile.ZipInfo("lib/passwd")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.UNSAFE_ARCHIVE and error.member == "lib/passwd"


async def test_a_zip_bomb_with_a_high_ratio_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "bomb.zip", bundle_files() | {"zeros.bin": bytes(8 << 20)})
    assert archive.stat().st_size < 64 * 1024  # 8 MiB of zeros compress ~1000:1
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.TOO_LARGE and "ratio" in error.message
    assert error.member == "zeros.bin"


async def test_a_tar_gz_bomb_with_a_high_ratio_is_refused(tmp_path: Path) -> None:
    archive = write_tar_gz(tmp_path / "bomb.tar.gz", bundle_files() | {"zeros.bin": bytes(8 << 20)})
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.TOO_LARGE and "ratio" in error.message


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
async def test_too_many_files_are_refused(tmp_path: Path, kind: str) -> None:
    files = bundle_files() | {f"many/{i}.txt": b"x" for i in range(300)}
    archive = (write_zip if kind == "zip" else write_tar_gz)(tmp_path / f"many.{kind}", files)
    error = await _refused(tmp_path, archive, ArchiveLimits(max_files=100))
    assert error.reason is Reason.TOO_LARGE and "100 entries" in error.message


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
async def test_the_total_size_is_capped_while_writing(tmp_path: Path, kind: str) -> None:
    files = bundle_files() | {"blob.bin": os.urandom(256 * 1024)}
    archive = (write_zip if kind == "zip" else write_tar_gz)(tmp_path / f"big.{kind}", files)
    error = await _refused(tmp_path, archive, ArchiveLimits(max_total_bytes=100_000))
    assert error.reason is Reason.TOO_LARGE and error.member == "blob.bin"


async def test_an_archive_file_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "big.zip", bundle_files() | {"blob.bin": os.urandom(64 * 1024)})
    error = await _refused(tmp_path, archive, ArchiveLimits(max_archive_bytes=32 * 1024))
    assert error.reason is Reason.TOO_LARGE


async def test_a_zip_whose_header_understates_a_size_is_refused(tmp_path: Path) -> None:
    """The writer counts real bytes; a lying header cannot smuggle more than it declares."""
    archive = write_zip(tmp_path / "liar.zip", bundle_files() | {"zeros.bin": bytes(1 << 20)})
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("zeros.bin")
    struct.pack_into("<I", data, info.header_offset + 22, 100)  # local header: file size
    start = 0
    while (central := data.find(b"PK\x01\x02", start)) != -1:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_len] == b"zeros.bin":
            struct.pack_into("<I", data, central + 24, 100)  # central directory: file size
        start = central + 4
    archive.write_bytes(bytes(data))
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.INVALID_BUNDLE and "CRC" in error.message


async def test_a_bzip2_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bz.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_BZIP2) as z:
        for name, data in bundle_files().items():
            z.writestr(name, data)
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.UNSAFE_ARCHIVE and "deflated" in error.message


async def test_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        with zipfile.ZipFile(archive, "w") as z:
            for name, data in bundle_files().items():
                z.writestr(name, data)
            z.writestr("demo.py", b"print('the second copy wins?')\n")
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.UNSAFE_ARCHIVE and error.member == "demo.py"


async def test_a_corrupt_archive_is_an_invalid_bundle(tmp_path: Path) -> None:
    archive = write_tar_gz(tmp_path / "cut.tar.gz", bundle_files() | {"x": os.urandom(4096)})
    archive.write_bytes(archive.read_bytes()[:-2000])
    error = await _refused(tmp_path, archive)
    assert error.reason is Reason.INVALID_BUNDLE


async def test_a_directory_bundle_with_a_symlink_is_refused(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    checksums = checksums_for(tmp_path, bundle)
    (bundle / "lib" / "passwd").symlink_to("/etc/passwd")
    inst = installer(tmp_path, allow(), checksums)
    with pytest.raises(InstallError) as info:
        await inst.install(bundle)
    assert info.value.reason is Reason.UNSAFE_BUNDLE and info.value.member == "lib/passwd"


async def test_a_directory_bundle_with_a_fifo_is_refused(tmp_path: Path) -> None:
    bundle = write_dir(tmp_path / "demo", bundle_files())
    checksums = checksums_for(tmp_path, bundle)
    os.mkfifo(bundle / "pipe")
    inst = installer(tmp_path, allow(), checksums)
    with pytest.raises(InstallError) as info:
        await inst.install(bundle)
    assert info.value.reason is Reason.UNSAFE_BUNDLE and info.value.member == "pipe"


def test_unpack_stops_when_aborted_and_removes_its_output(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", bundle_files())
    abort = threading.Event()
    abort.set()
    with pytest.raises(AbortedError):
        unpack(archive, "zip", tmp_path / "out", ArchiveLimits(), abort)
    assert not (tmp_path / "out").exists()


async def test_compiled_caches_in_an_archive_are_not_installed(tmp_path: Path) -> None:
    files = bundle_files()
    cache = {"__pycache__/demo.cpython-311.pyc": b"\0" * 16, "lib/__pycache__/x.pyc": b"\0"}
    archive = write_zip(tmp_path / "demo.zip", files | cache)
    inst = installer(tmp_path, allow(), checksums_for(tmp_path, archive))
    record = await inst.install(archive)
    entry = inst.path_of(record)
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*")) == [
        "demo.py",
        "lib",
        "lib/helpers.py",
        "plugin.toml",
    ]
