"""Filesystem escapes from a real sandbox: reading host files, writing outside scratch.

Landlock is tested alone (the worker keeps root, so only Landlock stands in the way), and
together with the uid drop as the host runs it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Layer, SandboxPolicy, SandboxReport, create_scratch, remove_scratch

from .conftest import REPO_ROOT, RunConfined, only, require, require_root

pytestmark = pytest.mark.integration


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A secret in a host-only directory (pytest's tmp_path is 0700, owned by the host)."""
    path = tmp_path / "secret.txt"
    path.write_text("hunter2")
    path.chmod(0o600)
    return path


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-writable directory outside scratch: file permissions would let anyone write."""
    path = Path(tempfile.mkdtemp(prefix="corral-sandbox-open-"))
    path.chmod(0o777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


async def test_secret_in_host_only_dir_is_unreadable(
    run_confined: RunConfined, policy: SandboxPolicy, secret: Path
) -> None:
    outcome = await run_confined(policy, "read", str(secret))
    assert outcome.refused(errno.EACCES), outcome.attempt


async def test_landlock_alone_hides_files_root_could_read(
    run_confined: RunConfined, policy: SandboxPolicy, kernel_report: SandboxReport, secret: Path
) -> None:
    require(kernel_report, Layer.LANDLOCK)
    landlocked = only(policy, Layer.LANDLOCK)
    # The repository root is on sys.path, so it may be listed, but its files stay unreadable.
    listed_only = str(REPO_ROOT / "pyproject.toml")
    for path in (str(secret), "/etc/passwd", "/proc/self/root/etc/passwd", listed_only):
        outcome = await run_confined(landlocked, "read", path)
        assert outcome.refused(errno.EACCES), (path, outcome.attempt)
    control = await run_confined(only(policy), "read", str(secret))
    assert control.attempt["detail"] == "hunter2"


async def test_uid_drop_alone_hides_host_only_dir(
    run_confined: RunConfined, policy: SandboxPolicy, kernel_report: SandboxReport, secret: Path
) -> None:
    require_root()
    require(kernel_report, Layer.CREDENTIALS)
    outcome = await run_confined(only(policy, Layer.CREDENTIALS), "read", str(secret))
    assert outcome.refused(errno.EACCES), outcome.attempt


async def test_write_outside_scratch_fails(
    run_confined: RunConfined, policy: SandboxPolicy, open_dir: Path
) -> None:
    for target in (open_dir / "planted.txt", Path("/tmp/corral-planted.txt")):
        outcome = await run_confined(policy, "write", str(target))
        assert outcome.refused(errno.EACCES), (target, outcome.attempt)
        assert not target.exists()


async def test_landlock_alone_refuses_world_writable_dir(
    run_confined: RunConfined, policy: SandboxPolicy, kernel_report: SandboxReport, open_dir: Path
) -> None:
    require(kernel_report, Layer.LANDLOCK)
    target = open_dir / "planted.txt"
    outcome = await run_confined(only(policy, Layer.LANDLOCK), "write", str(target))
    assert outcome.refused(errno.EACCES), outcome.attempt
    assert not target.exists()
    control = await run_confined(only(policy, Layer.CREDENTIALS), "write", str(target))
    assert control.attempt["ok"], control.attempt


async def test_scratch_is_writable_and_is_home_and_tmpdir(
    run_confined: RunConfined, policy: SandboxPolicy, scratch: Path
) -> None:
    outcome = await run_confined(policy, "scratch_roundtrip")
    assert outcome.attempt["ok"], outcome.attempt
    assert outcome.attempt["detail"].startswith(str(scratch) + "/")
    identity = (await run_confined(policy, "identity")).attempt["detail"]
    assert identity["cwd"] == str(scratch)
    if policy.uid is not None:
        assert identity["resuid"] == [policy.uid] * 3


async def test_other_tenants_scratch_is_unreadable(
    run_confined: RunConfined, policy: SandboxPolicy, scratch_root: Path
) -> None:
    other_uid = 62999 if os.geteuid() == 0 else None
    other = Path(create_scratch(str(scratch_root), f"other-{os.getpid()}", uid=other_uid))
    try:
        (other / "data.txt").write_text("tenant B")
        for action, path in (("read", other / "data.txt"), ("write", other / "x.txt")):
            outcome = await run_confined(policy, action, str(path))
            assert outcome.refused(errno.EACCES), outcome.attempt
    finally:
        remove_scratch(str(other))


async def test_stdlib_and_packages_import_after_uid_drop(
    run_confined: RunConfined, policy: SandboxPolicy
) -> None:
    """The interpreter lives under 0700 /root here: imports go through pinned fds."""
    names = ("decimal", "ssl", "sqlite3", "asyncio", "msgspec", "protocol", "plugins.sdk")
    outcome = await run_confined(policy, "imports", *names)
    assert outcome.attempt["ok"], outcome.attempt
    assert set(outcome.attempt["detail"]) == set(names)
