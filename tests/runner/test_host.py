"""The composed host: shipped plugins installed and verified, tampering refused, HIPAA strict."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol import ErrorCode, RemoteError
from protocol.categories.notification_channel import SendNotification
from protocol.categories.outbound_fax import FaxQuery
from runner.host import Host, HostSettings, PluginNotInstalledError
from runner.slot_types import UnavailableError, WorkerState
from runner.supervisor import ActivationKey
from sandbox import Mode

pytestmark = pytest.mark.integration

TWILIO = "dev.corral.twilio-sms"
TWILIO_CONFIG = {
    "account_sid": "AC" + "0" * 32,
    "auth_token": "tok-secret-123",
    "from_number": "+15550001111",
}


@pytest.fixture
def state_dir() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="corral-host-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tamper(host_store: Path, plugin_file: str) -> None:
    """Change one file of an installed (read-only) store entry, as an attacker with root would."""
    target = next(host_store.glob(f"*/{plugin_file}"))
    os.chmod(target.parent, 0o755)
    os.chmod(target, 0o644)
    with target.open("a") as f:
        f.write("\n# tampered\n")


async def test_shipped_plugins_are_installed_and_verified(state_dir: Path) -> None:
    host = await Host.start(HostSettings(state_dir=state_dir))
    try:
        assert {TWILIO, "dev.corral.phaxio-fax"} <= set(host.plugins)
        assert all(s.is_ok for s in host.statuses)
        entry = host.installer.path_of(host.plugins[TWILIO])
        assert not entry.stat().st_mode & stat.S_IWUSR  # the store is read-only
    finally:
        await host.close()


async def test_a_shipped_plugin_runs_confined_and_reaches_no_network(state_dir: Path) -> None:
    host = await Host.start(HostSettings(state_dir=state_dir))
    try:
        assert await host.activate("tenant-a", TWILIO, TWILIO_CONFIG)
        key = host.supervisor.resolve("tenant-a", TWILIO)
        message = SendNotification(recipient="+15550002222", body="hello")
        with pytest.raises(RemoteError) as info:
            await host.supervisor.call(key, "notification_channel.send", message, timeout_s=10)
        assert info.value.code == ErrorCode.UNAVAILABLE  # egress is not offered yet
        pid = host.supervisor.statuses()[0].slots[0].pid
        assert pid is not None
        with open(f"/proc/{pid}/status") as status:  # noqa: ASYNC230 - a tiny procfs read
            fields = dict(line.split(":", 1) for line in status)
        assert fields["Seccomp"].strip() == "2" and fields["NoNewPrivs"].strip() == "1"
        assert int(fields["Uid"].split()[0]) != 0
    finally:
        await host.close()


async def test_the_declarative_http_example_runs_confined(state_dir: Path) -> None:
    """The generic runtime loads provider.json inside the sandbox and asks the host for egress."""
    plugin_id = "dev.corral.http-fax-example"
    config = {"api_key": "key-1", "api_secret": "secret-0d9c8b7a"}
    host = await Host.start(HostSettings(state_dir=state_dir))
    try:
        assert await host.activate("tenant-a", plugin_id, config)
        key = host.supervisor.resolve("tenant-a", plugin_id)
        with pytest.raises(RemoteError) as info:
            await host.supervisor.call(
                key, "outbound_fax.get_status", FaxQuery(job_id="1"), timeout_s=10
            )
        assert info.value.code == ErrorCode.UNAVAILABLE  # it got as far as http.request
        assert "secret-0d9c8b7a" not in info.value.message
    finally:
        await host.close()


async def test_a_tampered_plugin_is_refused_at_start(state_dir: Path) -> None:
    first = await Host.start(HostSettings(state_dir=state_dir))
    await first.close()
    tamper(state_dir / "store", "twilio_sms.py")
    host = await Host.start(HostSettings(state_dir=state_dir, shipped_plugins_dir=None))
    try:
        statuses = {s.record.plugin_id: s.status for s in host.statuses}
        assert statuses[TWILIO] == "modified"
        assert TWILIO not in host.plugins and "dev.corral.phaxio-fax" in host.plugins
        with pytest.raises(PluginNotInstalledError):
            await host.activate("tenant-a", TWILIO, TWILIO_CONFIG)
    finally:
        await host.close()


async def test_a_file_swapped_after_start_up_is_caught_at_spawn(state_dir: Path) -> None:
    host = await Host.start(HostSettings(state_dir=state_dir))
    try:
        tamper(state_dir / "store", "twilio_sms.py")
        assert not await host.activate("tenant-a", TWILIO, TWILIO_CONFIG, wait_s=2)
        status = host.supervisor.statuses()[0].slots[0]
        assert status.state in (WorkerState.BACKOFF, WorkerState.STARTING, WorkerState.CIRCUIT_OPEN)
        assert "verification failed: modified" in (status.last_error or "")
        with pytest.raises(UnavailableError):
            await host.supervisor.call(ActivationKey("tenant-a", TWILIO), "ping")
    finally:
        await host.close()


async def test_the_hipaa_profile_forces_strict_sandboxing_and_no_remote_install(
    state_dir: Path,
) -> None:
    settings = HostSettings(
        state_dir=state_dir, profile="hipaa", sandbox_mode=Mode.PERMISSIVE, remote_install=True
    )
    host = await Host.start(settings)
    try:
        assert host.sandbox.settings.mode is Mode.STRICT
        assert host.installer.settings.remote_install is False
    finally:
        await host.close()
