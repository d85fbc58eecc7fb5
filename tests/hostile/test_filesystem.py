"""Hostile plugins reaching for files: host secrets, the config store, a neighbour's scratch.

Where the test can, it makes the target readable or writable by anyone, so that only Landlock
(EACCES) stands between the worker and the file; the uid drop is the second line elsewhere.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.digest import tree_digest
from sandbox import Layer

from .conftest import Host, assert_refused, needs_any, records, remove_tree

pytestmark = [pytest.mark.hostile, pytest.mark.asyncio(loop_scope="module")]

SECRET = "s3cr3t-correct-horse-battery-staple"
# ENOENT: truncating, chmodding or unlinking a file that does not exist (and was not created).
WRITE_ERRNOS: set[str | None] = {"EACCES", "EPERM", "ENOENT", "EXDEV"}
ALLOWED_ENV = {
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUTF8",
    "MALLOC_ARENA_MAX",
    "CORRAL_LOG_LEVEL",
    "CORRAL_UVLOOP",
}
NEST_DEPTH = 1200  # past the interpreter's recursion limit of 1000


def make_host_dir(mode: int) -> Path:
    """A directory of the host's, outside every sandbox path."""
    path = Path(tempfile.mkdtemp(prefix="corral-hostile-host-", dir="/tmp"))
    path.chmod(mode)
    return path


def write_file(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(mode=0o755, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def read_file(path: str | Path) -> str:
    return Path(path).read_text()


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def existing(paths: list[Path]) -> list[Path]:
    return [path for path in paths if path.exists()]


@pytest.fixture
def host_only_secret() -> Iterator[Path]:
    """A secret only root may read: a 0600 file in a 0700 directory."""
    directory = make_host_dir(0o700)
    try:
        yield write_file(directory / "secret.txt", SECRET, 0o600)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def config_stores(host: Host) -> Iterator[list[Path]]:
    """Fake config stores anyone may read: only Landlock keeps the worker out.

    One sits in a project-like directory, one in the state directory, next to the runtime
    and bundles the worker may read.
    """
    project = make_host_dir(0o755)
    text = f'{{"admin_token": "{SECRET}"}}'
    stores = [project / "config", host.state_dir / "config"]
    try:
        yield [write_file(d / "corral.config.json", text, 0o644) for d in stores]
    finally:
        for directory in (project, *stores):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-writable directory like /tmp, holding a file anyone may write."""
    directory = make_host_dir(0o1777)
    try:
        write_file(directory / "writable-by-anyone.txt", "original\n", 0o666)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def canaries() -> Iterator[list[Path]]:
    """Host paths a worker's links may point at: a directory holding a file, and a file."""
    directory = make_host_dir(0o755)
    try:
        write_file(directory / "tree" / "canary.txt", "still here\n", 0o644)
        write_file(directory / "canary.txt", "still here\n", 0o644)
        yield [directory / "tree", directory / "canary.txt"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def assert_secret_kept(result_text: list[str]) -> None:
    assert not any(SECRET in text for text in result_text), "the secret leaked"


async def test_a_secret_in_a_host_only_directory_is_unreadable(
    host: Host, host_only_secret: Path
) -> None:
    needs_any(host.report, Layer.LANDLOCK, Layer.CREDENTIALS)
    result = await host.attack("read", {"path": str(host_only_secret)})
    assert_refused(result, errnos={"EACCES"})
    assert_secret_kept(result.errors)
    await host.assert_healthy()


async def test_the_config_store_is_unreadable(host: Host, config_stores: list[Path]) -> None:
    needs_any(host.report, Layer.LANDLOCK)
    for store in config_stores:
        result = await host.attack("read", {"path": str(store)})
        assert_refused(result, errnos={"EACCES"})
        assert_secret_kept(result.errors)
    await host.assert_healthy()


async def test_another_tenants_scratch_is_unreadable(host: Host) -> None:
    needs_any(host.report, Layer.LANDLOCK, Layer.CREDENTIALS)
    assert host.bystander is not None
    planted = await host.attack("plant", {"secret": SECRET}, worker=host.bystander)
    home, tmpdir = planted.errors
    for path in (home, tmpdir):
        assert read_file(path) == SECRET  # it is there, and the host can read it
        result = await host.attack("read", {"path": path})
        assert_refused(result, errnos={"EACCES"})
        assert_secret_kept(result.errors)
    await host.assert_healthy()


async def test_writing_outside_scratch_is_refused(host: Host, open_dir: Path) -> None:
    needs_any(host.report, Layer.LANDLOCK)
    assert host.bystander is not None
    planted = await host.attack("plant", {"secret": SECRET}, worker=host.bystander)
    neighbour_secret = Path(planted.errors[0])
    open_file = open_dir / "writable-by-anyone.txt"
    new_files = [
        open_dir / "created-by-a-plugin.txt",
        Path(tempfile.gettempdir()) / f"corral-hostile-{open_dir.name}.txt",
        neighbour_secret.parent / "created-by-a-plugin.txt",
    ]
    code = [host.state_dir / "bundles", host.state_dir / "runtime"]
    code_before = [tree_digest(path) for path in code]

    paths = [str(open_file), *map(str, new_files), str(neighbour_secret)]
    result = await host.attack("write", {"paths": paths, "own_code": True})

    attempts = assert_refused(result, errnos=WRITE_ERRNOS)
    writes = [a for a in attempts if a["attempt"].startswith("create/overwrite")]
    assert len(writes) == len(paths) + 2 and {a["errno"] for a in writes} == {"EACCES"}
    assert read_file(open_file) == "original\n"
    assert file_mode(open_file) == 0o666
    assert existing(new_files) == []
    assert read_file(neighbour_secret) == SECRET
    assert [tree_digest(path) for path in code] == code_before
    await host.assert_healthy()


async def test_links_planted_in_scratch_do_not_turn_teardown_against_the_host(
    host: Host, canaries: list[Path]
) -> None:
    worker = await host.start()
    scratch = Path((await host.whoami(worker))["home"])
    targets = [str(canaries[0]), str(canaries[1]), str(host.state_dir)]
    result = await host.attack("links", {"targets": targets}, worker=worker)
    attempts = records(result)
    hard = [a for a in attempts if a["attempt"].startswith("hardlink")]
    assert hard and not any(a["ok"] for a in hard), hard  # a hardlink would pin the file
    await worker.stop(grace_s=1)
    assert existing([scratch]) == []  # removed, links and all, without following them
    kept = [canaries[0] / "canary.txt", canaries[1], host.state_dir / "runtime"]
    assert existing(kept) == kept
    await host.assert_healthy()


async def test_a_deep_tree_in_scratch_does_not_survive_teardown(host: Host) -> None:
    worker = await host.start()
    scratch = Path((await host.whoami(worker))["home"])
    try:
        result = await host.attack("nest", {"depth": NEST_DEPTH, "secret": SECRET}, worker=worker)
        assert result.valid, result.errors  # writing inside its own scratch is allowed
        await worker.stop(grace_s=1)
        assert existing([scratch]) == [], "the tenant's scratch outlived its worker"
    finally:
        remove_tree(scratch)
    await host.assert_healthy()


async def test_host_environment_secrets_do_not_reach_the_worker(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = {
        "CORRAL_ADMIN_TOKEN": SECRET,
        "CORRAL_CONFIG": "/etc/corral/corral.config.json",
        "HTTPS_PROXY": "http://proxy.internal:3128",
        "LD_PRELOAD": "/tmp/evil.so",
        "PYTHONPATH": "/tmp/evil",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    worker = await host.start()  # started after the host's environment changed
    seen = set((await host.whoami(worker))["env"])
    assert seen <= ALLOWED_ENV, f"unexpected variables: {sorted(seen - ALLOWED_ENV)}"
    assert not seen & planted.keys()
    await worker.stop(grace_s=1)
    await host.assert_healthy()
