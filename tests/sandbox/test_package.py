"""The sandbox package's boundaries and plain-data pieces: imports, policy, uids, scratch."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import (
    Mode,
    ResourceLimits,
    SandboxPolicy,
    UidPool,
    UidPoolExhaustedError,
    create_scratch,
    remove_scratch,
)

from .conftest import REPO_ROOT

FORBIDDEN = ("aiohttp", "msgspec", "protocol", "runner", "plugins", "pydantic", "jsonschema")


@pytest.mark.parametrize("module", ["sandbox", "sandbox.bootstrap", "sandbox.confine"])
def test_import_pulls_in_no_other_package(module: str) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); import {module}; "
        "import json; print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, check=True, timeout=30
    )
    modules = json.loads(done.stdout)
    leaked = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    assert leaked == []
    if module != "sandbox":
        assert "sysconfig" not in modules and "subprocess" not in modules


def test_policy_round_trips_through_json() -> None:
    policy = SandboxPolicy(
        scratch_dir="/s/w1",
        read_only_paths=("/usr/lib",),
        sys_path=("/lib/python3.11",),
        limits=ResourceLimits(cpu_seconds=5, pids=None),
        mode=Mode.PERMISSIVE,
        uid=61000,
        gid=61001,
        cgroup_dirs=("/sys/fs/cgroup/memory/corral/w1", "/sys/fs/cgroup/pids/corral/w1"),
        host_pid=42,
    )
    assert SandboxPolicy.from_json(policy.to_json()) == policy


def test_uid_pool_hands_out_distinct_uids_then_reuses_late() -> None:
    pool = UidPool(100, 102)
    uids = [pool.allocate() for _ in range(3)]
    assert sorted(uids) == [100, 101, 102]
    with pytest.raises(UidPoolExhaustedError):
        pool.allocate()
    pool.release(101)
    pool.release(101)  # a no-op
    assert pool.allocate() == 101
    assert pool.in_use() == {100, 101, 102}


def test_scratch_is_private_to_its_uid(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    uid = 62998 if os.geteuid() == 0 else None
    path = Path(create_scratch(str(root), "w1", uid=uid))
    assert stat.S_IMODE(root.stat().st_mode) == 0o711
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    if uid is not None:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, uid)
    (path / "sub").mkdir()
    (path / "sub" / "link").symlink_to("/etc")
    remove_scratch(str(path))
    remove_scratch(str(path))  # idempotent
    assert not path.exists() and Path("/etc/passwd").exists()
    with pytest.raises(ValueError, match="bad scratch"):
        create_scratch(str(root), "../escape")
