"""The worker's environment: built from an allow-list, with nothing of the host's leaking in."""

from __future__ import annotations

import pytest

from sandbox import SandboxPolicy, build_env
from sandbox.environment import BASE_ENV

from .conftest import RunConfined


async def test_host_variables_do_not_leak(
    run_confined: RunConfined, policy: SandboxPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_TEST_API_KEY", "sk-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    outcome = await run_confined(policy, "environ")
    env = outcome.attempt["detail"]
    assert set(env) == {*BASE_ENV, "HOME", "TMPDIR"}
    assert env["HOME"] == env["TMPDIR"] == policy.scratch_dir
    assert env["PATH"] == "/usr/bin:/bin"
    assert "sk-secret" not in outcome.stderr


def test_extras_are_added() -> None:
    env = build_env("/scratch/w1", {"CORRAL_PLUGIN_ID": "fax"})
    assert env["CORRAL_PLUGIN_ID"] == "fax"
    assert env["TMPDIR"] == "/scratch/w1"
    assert "PYTHONHASHSEED" not in env  # hash randomisation stays on


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "GCONV_PATH", "HOME", "PATH", "A=B", ""]
)
def test_dangerous_or_reserved_extras_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"environment variable"):
        build_env("/scratch/w1", {name: "x"})
