"""A real worker process behind PluginWorker: handshake, calls, faults, and stopping."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import psutil
import pytest

from protocol import CallTimeoutError, ConnectionClosedError, ErrorCode, RemoteError
from protocol.categories.input_validator import ValidationInput, ValidationResult
from runner.errors import WorkerStartError
from runner.spawn import LaunchRequest

from .conftest import FIXTURES, StartWorker, echo_spec

pytestmark = pytest.mark.integration


def validate(field: str, value: object = None) -> ValidationInput:
    return ValidationInput(field=field, value=value)


async def test_a_real_worker_handshakes_and_answers(start_worker: StartWorker) -> None:
    worker = await start_worker()
    assert worker.info is not None and worker.info.plugin_id == "dev.corral.test.echo"
    result = await worker.call(
        "input_validator.validate", validate("config"), result_type=ValidationResult
    )
    assert result.errors == ["tenant-a"]
    await worker.ping(timeout_s=2)


async def test_printing_to_stdout_does_not_corrupt_the_channel(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner.worker")
    worker = await start_worker()
    for _ in range(3):
        await worker.call("input_validator.validate", validate("print"))
    await worker.ping(timeout_s=2)
    await asyncio.sleep(0.1)
    assert "raw bytes written to fd 1" in caplog.text  # it went to the log, re-logged by the host
    assert f"pid {worker.pid}" in caplog.text


async def test_a_worker_that_exits_mid_call_fails_the_call_cleanly(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    with pytest.raises(ConnectionClosedError):
        await worker.call("input_validator.validate", validate("crash"), timeout_s=5)
    assert await worker.kill() == 3


async def test_a_deadline_cancels_the_call_and_the_worker_keeps_serving(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    with pytest.raises(CallTimeoutError):
        await worker.call("input_validator.validate", validate("sleep", 30), timeout_s=0.2)
    await worker.ping(timeout_s=2)


async def test_stop_asks_the_worker_to_exit_and_reaps_it(start_worker: StartWorker) -> None:
    worker = await start_worker()
    pid = worker.pid
    assert await worker.stop(grace_s=2) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_the_worker_exits_promptly_when_its_stdin_closes(start_worker: StartWorker) -> None:
    worker = await start_worker()
    worker._endpoint._writer.close()  # what the host's death looks like from the worker
    async with asyncio.timeout(3):
        assert await worker._process.wait() == 0


async def test_unknown_methods_and_bad_params_are_clean_errors(start_worker: StartWorker) -> None:
    worker = await start_worker()
    with pytest.raises(RemoteError) as info:
        await worker.call("storage_backend.teleport")
    assert info.value.code == ErrorCode.METHOD_NOT_FOUND
    with pytest.raises(RemoteError) as info:
        await worker.call("input_validator.validate", {"field": 7})
    assert info.value.code == ErrorCode.INVALID_PARAMS


async def test_http_request_is_answered_unavailable_until_egress_exists(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    with pytest.raises(RemoteError) as info:
        await worker.call("input_validator.validate", validate("http", "https://example.com"))
    # The plugin let the host's refusal propagate: it arrives with the host's code.
    assert info.value.code == ErrorCode.UNAVAILABLE


async def test_a_bundle_that_cannot_load_fails_the_start_with_its_reason(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    bundle = tmp_path / "echo"
    shutil.copytree(FIXTURES / "echo", bundle)
    (bundle / "echo_plugin.py").write_text("import no_such_module\n")
    with pytest.raises(WorkerStartError) as info:
        await start_worker(echo_spec(bundle))
    assert "ModuleNotFoundError" in info.value.reason
    assert any("no_such_module" in line for line in info.value.stderr_tail)


async def test_a_worker_that_never_starts_fails_within_the_start_deadline(
    start_worker: StartWorker,
) -> None:
    hang = LaunchRequest(entry_args=(), entry_module="tests.fixtures.sleeper")
    spec = echo_spec(launch=hang, start_timeout_s=0.3)
    with pytest.raises(WorkerStartError, match="timed out"):
        await start_worker(spec)


async def test_a_missing_executable_is_a_start_error(start_worker: StartWorker) -> None:
    with pytest.raises(WorkerStartError, match="cannot spawn"):
        missing = LaunchRequest(entry_args=(), python="/nonexistent/python")
        await start_worker(echo_spec(launch=missing))


async def test_the_worker_gets_only_the_environment_it_is_given(
    start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_TEST_SECRET", "do-not-leak")
    worker = await start_worker()
    environ = psutil.Process(worker.pid).environ()
    assert "CORRAL_TEST_SECRET" not in environ
    assert set(environ) <= {"PATH", "LANG", "LC_CTYPE"}


async def test_cancelling_a_start_leaves_no_process_behind(start_worker: StartWorker) -> None:
    task = asyncio.create_task(start_worker(echo_spec()))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    children = [c for c in psutil.Process(os.getpid()).children() if c.status() != "zombie"]
    assert children == []
