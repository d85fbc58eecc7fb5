"""Tests for sandbox/forkserver.py: a real fork-server forking real workers, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from sandbox.environment import build_env
from sandbox.forkserver import ForkedProcess, ForkServer, ForkServerError
from sandbox.forkserver_wire import encode
from sandbox.launch import default_read_only_paths, default_sys_path
from sandbox.policy import SandboxPolicy
from sandbox.probe import SandboxReport, requested_layers
from tests.sandbox.conftest import require

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).parents[2]
TIMEOUT_S = 10.0
PR_SET_CHILD_SUBREAPER = 36


def _policy(scratch: Path, *, confined: bool = False) -> SandboxPolicy:
    """Return a worker policy; unless `confined`, without the kernel layers (tested elsewhere)."""
    layers = {} if confined else {"isolate_network": False, "landlock": False, "seccomp": False}
    return SandboxPolicy(
        scratch_dir=str(scratch),
        sys_path=default_sys_path(str(FIXTURES)),
        read_only_paths=default_read_only_paths(str(FIXTURES)),
        **layers,  # type: ignore[arg-type]
    )


async def _start(request_timeout_s: float = 5.0) -> ForkServer:
    return await ForkServer.start(
        preload=["asyncio"], sys_path=default_sys_path(), request_timeout_s=request_timeout_s
    )


@pytest.fixture
async def server() -> AsyncIterator[ForkServer]:
    fork_server = await _start()
    try:
        yield fork_server
    finally:
        await fork_server.close(TIMEOUT_S)


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make the test process the reaper of orphaned descendants, as a prompt init would be.

    PID 1 on some machines (this one included) reaps orphans only every few seconds, so they
    linger as zombies; here the test reaps what it orphans, and can tell dead from gone.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


async def _spawn(
    server: ForkServer,
    scratch: Path,
    entry: str,
    *args: str,
    env: dict[str, str] | None = None,
    confined: bool = False,
    cwd: str | None = None,
) -> ForkedProcess:
    return await server.spawn(
        _policy(scratch, confined=confined),
        entry,
        args,
        build_env(str(scratch)) if env is None else env,
        str(scratch) if cwd is None else cwd,
    )


async def _finish(process: ForkedProcess) -> tuple[int, bytes, bytes]:
    """Close stdin, read both outputs to EOF and return (status, stdout, stderr)."""
    process.stdin.close()
    async with asyncio.timeout(TIMEOUT_S):
        out, err = await asyncio.gather(process.stdout.read(), process.stderr.read())
        return await process.wait(), out, err


async def _ready(process: ForkedProcess) -> None:
    """Wait for the sleep fixture to say it is running."""
    async with asyncio.timeout(TIMEOUT_S):
        line = await process.stdout.readline()
    assert line == b"ready\n", await process.stderr.read()


async def _eventually(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # polls /proc and the like: there is no event to wait on
            await asyncio.sleep(0.01)


async def _warm_up(server: ForkServer, scratch: Path) -> None:
    """Run one worker, so that fds an event loop opens once for good (uvloop) exist already."""
    assert await _finish(await _spawn(server, scratch, "forkserver_echo")) == (0, b"", b"")


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _proc_status(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text()


def _fd_targets(pid: int) -> dict[int, str]:
    return {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def _are_directories(paths: Iterable[str]) -> bool:
    return all(os.path.isdir(path) for path in paths)


def _describe(pids: Iterable[int]) -> list[str]:
    """Say what each pid is now: its state and parent, or that it is gone."""
    described = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            described.append(f"{pid} {process.status()} ppid={process.ppid()} {process.cmdline()}")
        except psutil.NoSuchProcess:
            described.append(f"{pid} gone")
    return described


def _reap(pid: int) -> bool:
    """Reap `pid` if it is a dead child of ours; return whether it was."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not (yet) reparented to us
        return False


async def test_spawn_round_trips_stdin_to_stdout_and_reports_exit_status(
    server: ForkServer, tmp_path: Path
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_echo", "3")
    process.stdin.write(b"hello\n")
    await process.stdin.drain()
    async with asyncio.timeout(TIMEOUT_S):
        assert await process.stdout.readline() == b"hello\n"
    assert process.returncode is None
    assert await _finish(process) == (3, b"", b"")
    assert process.returncode == 3
    await process.stdin.wait_closed()


async def test_spawn_streams_megabytes_both_ways(server: ForkServer, tmp_path: Path) -> None:
    process = await _spawn(server, tmp_path, "forkserver_echo")
    payload = b"".join(bytes([65 + i % 26]) * 65535 + b"\n" for i in range(64))  # 4 MiB

    async def feed() -> None:
        process.stdin.write(payload)
        await process.stdin.drain()
        process.stdin.close()

    async with asyncio.timeout(TIMEOUT_S):
        _, echoed = await asyncio.gather(feed(), process.stdout.read())
    assert echoed == payload
    assert await _finish(process) == (0, b"", b"")


async def test_worker_pipes_are_enlarged_and_read_in_64_kib_chunks(
    server: ForkServer, tmp_path: Path
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_echo")
    stdin_pipe = process.stdin.transport.get_extra_info("pipe")
    assert fcntl.fcntl(stdin_pipe.fileno(), fcntl.F_GETPIPE_SZ) == 1024 * 1024
    transport = process.stdout._transport  # type: ignore[attr-defined]
    if hasattr(transport, "max_size"):  # asyncio's pipe transport, not uvloop's
        assert transport.max_size == 64 * 1024
    assert await _finish(process) == (0, b"", b"")


@pytest.mark.parametrize(
    ("stop", "status"),
    [
        (ForkedProcess.kill, -signal.SIGKILL),
        (ForkedProcess.terminate, -signal.SIGTERM),
        (lambda process: process.send_signal(signal.SIGUSR1), -signal.SIGUSR1),
    ],
)
async def test_wait_reports_a_signal_as_a_negative_status(
    server: ForkServer,
    tmp_path: Path,
    stop: Callable[[ForkedProcess], None],
    status: int,
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_sleep")
    await _ready(process)
    stop(process)
    assert (await _finish(process))[0] == status


async def test_uncaught_keyboard_interrupt_ends_the_worker_by_sigint(
    server: ForkServer, tmp_path: Path
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_sleep")
    await _ready(process)
    process.send_signal(signal.SIGINT)
    status, _, err = await _finish(process)
    assert status == -signal.SIGINT
    assert b"KeyboardInterrupt" in err


async def test_wait_after_exit_returns_the_status_again_and_signals_are_no_ops(
    server: ForkServer, tmp_path: Path
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_sleep")
    await _ready(process)
    process.kill()
    assert (await _finish(process))[0] == -signal.SIGKILL
    process.kill()
    process.terminate()
    assert await process.wait() == -signal.SIGKILL
    assert process.returncode == -signal.SIGKILL


async def test_cancelled_wait_leaves_the_exit_status_for_the_next_wait(
    server: ForkServer, tmp_path: Path
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_sleep")
    await _ready(process)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await process.wait()
    process.kill()
    assert (await _finish(process))[0] == -signal.SIGKILL


async def test_exited_workers_are_reaped_leaving_no_zombie(
    server: ForkServer, tmp_path: Path
) -> None:
    processes = [await _spawn(server, tmp_path, "forkserver_echo", str(i)) for i in range(5)]
    statuses = [(await _finish(process))[0] for process in processes]
    assert statuses == [0, 1, 2, 3, 4]
    assert psutil.Process(server.pid).children() == []
    assert not any(psutil.pid_exists(process.pid) for process in processes)


async def test_fork_server_stays_single_threaded_and_unconfined(
    server: ForkServer, tmp_path: Path
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_echo")
    assert await _finish(process) == (0, b"", b"")
    assert psutil.Process(server.pid).num_threads() == 1
    status = _proc_status(server.pid)
    assert "NoNewPrivs:\t0" in status
    assert "Seccomp:\t0" in status


async def test_worker_sees_only_the_environment_it_was_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CORRAL_TEST_SECRET", "must-not-leak")
    server = await _start()  # started while the host's environment holds the secret
    try:
        env = build_env(str(tmp_path), {"CORRAL_TEST_GIVEN": "yes"})
        process = await _spawn(server, tmp_path, "forkserver_report", "a", "b c", env=env)
        status, out, err = await _finish(process)
    finally:
        await server.close(TIMEOUT_S)
    assert (status, err) == (0, b"")
    report = json.loads(out)
    assert report["env"] == env
    assert report["cwd"] == str(tmp_path)
    assert report["argv"][1:] == ["a", "b c"]
    assert report["name"] == "__main__"
    assert report["seekable"] == [False, False, False]  # sys.std* built for pipes
    assert report["sid"] == report["pid"]
    assert report["ppid"] == server.pid


async def test_worker_inherits_no_descriptor_but_its_stdio(
    server: ForkServer, tmp_path: Path
) -> None:
    process = await _spawn(server, tmp_path, "forkserver_sleep")
    await _ready(process)
    targets = _fd_targets(process.pid)
    process.kill()
    await _finish(process)
    assert all(targets[fd].startswith("pipe:") for fd in (0, 1, 2))
    # What is left are the directories confine pins for sys.path: no socket, pipe or file.
    extra = {fd: target for fd, target in targets.items() if fd > 2}
    assert _are_directories(extra.values()), extra


async def test_worker_with_every_layer_is_confined(
    server: ForkServer, policy: SandboxPolicy, kernel_report: SandboxReport
) -> None:
    require(kernel_report, *requested_layers(policy))  # fails, not skips, where available
    env = build_env(policy.scratch_dir)
    process = await server.spawn(policy, "forkserver_sleep", [], env, policy.scratch_dir)
    await _ready(process)
    status = _proc_status(process.pid)
    uids = psutil.Process(process.pid).uids()
    worker_net = os.readlink(f"/proc/{process.pid}/ns/net")
    process.kill()
    await _finish(process)
    assert "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status
    assert worker_net != os.readlink("/proc/self/ns/net")
    if policy.uid is not None:
        assert uids.real == uids.effective == policy.uid


async def test_worker_set_up_failure_is_reported_like_the_bootstrap(
    server: ForkServer, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing")
    process = await _spawn(server, tmp_path, "forkserver_echo", cwd=missing)
    status, out, err = await _finish(process)
    assert (status, out) == (78, b"")
    event = json.loads(err.splitlines()[-1])
    assert event["event"] == "sandbox_refused"
    assert missing in event["reason"]


async def test_missing_entry_module_fails_with_a_traceback(
    server: ForkServer, tmp_path: Path
) -> None:
    status, _, err = await _finish(await _spawn(server, tmp_path, "forkserver_no_such_module"))
    assert status == 1
    assert b"ImportError" in err


async def test_fork_server_ignores_malformed_requests_and_logs_them_through_the_host(
    server: ForkServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await server._send(b"not json", [])
    await server._send(encode({"op": "spawn", "id": 10**6}), [])  # no fields, no fds
    await server._send(encode({"op": "no_such_op"}), [])
    assert await _finish(await _spawn(server, tmp_path, "forkserver_echo")) == (0, b"", b"")
    assert server.is_alive

    def relayed() -> list[str]:  # the fork-server's stderr, re-logged by the host
        return [r.getMessage() for r in caplog.records if r.name == "sandbox.forkserver"]

    await _eventually(lambda: len(relayed()) >= 2)  # the bad JSON and the unknown op
    assert all(f"fork-server {server.pid}: " in message for message in relayed())
    assert all("ignored a control message" in message for message in relayed())


async def test_start_fails_clearly_when_a_preload_is_missing() -> None:
    children_before = {child.pid for child in psutil.Process().children()}
    with pytest.raises(ForkServerError, match="no_such_module_for_preload"):
        await ForkServer.start(preload=["no_such_module_for_preload"], sys_path=default_sys_path())
    assert {child.pid for child in psutil.Process().children()} <= children_before


async def test_output_of_a_preloaded_module_never_reaches_a_worker(tmp_path: Path) -> None:
    server = await ForkServer.start(
        preload=["forkserver_noisy"], sys_path=[*default_sys_path(), str(FIXTURES)]
    )
    try:
        process = await _spawn(server, tmp_path, "forkserver_echo")
        process.stdin.write(b"hello\n")
        assert await _finish(process) == (0, b"hello\n", b"")
    finally:
        await server.close(TIMEOUT_S)


async def test_start_refuses_a_preload_that_starts_a_thread() -> None:
    with pytest.raises(ForkServerError, match="threads"):
        await ForkServer.start(
            preload=["forkserver_threaded"], sys_path=[*default_sys_path(), str(FIXTURES)]
        )


async def test_close_kills_running_workers_and_resolves_their_waits(tmp_path: Path) -> None:
    server = await _start()
    process = await _spawn(server, tmp_path, "forkserver_sleep")
    await _ready(process)
    await server.close(TIMEOUT_S)
    assert not server.is_alive
    assert (await _finish(process))[0] == -signal.SIGKILL
    assert not psutil.pid_exists(process.pid)
    await server.close(TIMEOUT_S)  # idempotent
    with pytest.raises(ForkServerError):
        await _spawn(server, tmp_path, "forkserver_echo")


@pytest.mark.usefixtures("subreaper")
async def test_fork_server_death_resolves_waits_and_fails_new_spawns(
    server: ForkServer, tmp_path: Path
) -> None:
    processes = [await _spawn(server, tmp_path, "forkserver_sleep") for _ in range(2)]
    for process in processes:
        await _ready(process)
    os.kill(server.pid, signal.SIGKILL)
    statuses = [(await _finish(process))[0] for process in processes]
    assert statuses == [-signal.SIGKILL, -signal.SIGKILL]
    assert not server.is_alive
    assert not any(psutil.pid_exists(process.pid) for process in processes)  # reaped, too
    with pytest.raises(ForkServerError, match="not running"):
        await _spawn(server, tmp_path, "forkserver_echo")


async def test_pending_spawn_fails_when_the_fork_server_dies(
    server: ForkServer, tmp_path: Path
) -> None:
    await _warm_up(server, tmp_path)
    baseline = _open_fds()
    os.kill(server.pid, signal.SIGSTOP)  # it will never answer
    spawn = asyncio.create_task(_spawn(server, tmp_path, "forkserver_echo"))
    await asyncio.sleep(0.1)
    os.kill(server.pid, signal.SIGKILL)
    with pytest.raises(ForkServerError, match="not running"):
        await spawn
    assert not server.is_alive
    await _eventually(lambda: _open_fds() <= baseline)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_abandoned_spawn_leaves_no_fd_or_process_behind(how: str, tmp_path: Path) -> None:
    server = await _start(request_timeout_s=0.3)
    try:
        await _warm_up(server, tmp_path)
        baseline = _open_fds()
        os.kill(server.pid, signal.SIGSTOP)  # the request waits unread until SIGCONT
        try:
            spawn = asyncio.create_task(_spawn(server, tmp_path, "forkserver_sleep"))
            if how == "cancel":
                await asyncio.sleep(0.1)
                spawn.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await spawn
            else:
                with pytest.raises(ForkServerError, match="no reply"):
                    await spawn
        finally:
            os.kill(server.pid, signal.SIGCONT)
        # The fork-server now forks the abandoned worker; the host must kill it on sight.
        assert await _finish(await _spawn(server, tmp_path, "forkserver_echo")) == (0, b"", b"")
        await _eventually(lambda: psutil.Process(server.pid).children() == [])
        await _eventually(lambda: _open_fds() == baseline)
        assert server.is_alive
    finally:
        await server.close(TIMEOUT_S)


@pytest.mark.usefixtures("subreaper")
async def test_host_sigkill_takes_the_fork_server_and_every_worker_down(tmp_path: Path) -> None:
    config = {
        "host_path": [str(REPO_ROOT)],
        "server_path": list(default_sys_path()),
        "policy": _policy(tmp_path).to_json(),
        "workers": 3,
    }
    host = await asyncio.create_subprocess_exec(
        *(sys.executable, str(FIXTURES / "forkserver_host.py"), json.dumps(config)),
        stdout=asyncio.subprocess.PIPE,
    )
    tree: list[psutil.Process] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            report = json.loads(await host.stdout.readline())  # type: ignore[union-attr]
        tree = [psutil.Process(pid) for pid in (report["server"], *report["workers"])]
        loop = asyncio.get_running_loop()
        host.kill()
        killed_at = loop.time()
        # Each one is reaped by the fork-server (which kills its workers when the control
        # channel closes), by us (the subreaper) or by init: gone either way, or still there.
        while any(process.is_running() for process in tree) and loop.time() - killed_at < 1.0:
            for process in tree:
                _reap(process.pid)
            await asyncio.sleep(0.005)
        survivors = [process.pid for process in tree if process.is_running()]
        assert not survivors, f"1 s after the host was SIGKILLed: {_describe(survivors)}"
    finally:
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            host.kill()
        await host.wait()
        await host.stdout.read()  # type: ignore[union-attr]
