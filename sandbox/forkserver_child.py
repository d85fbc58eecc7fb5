"""What a freshly forked worker does inside the fork-server, from the fork to `os._exit`.

`run_worker` turns the fork-server's child into a worker (session, stdio, fds, env, cwd, then the
layers through `sandbox.bootstrap.confine_or_exit`), runs the entry module as `__main__` and
exits like an interpreter. The fork-server (`sandbox.forkserver_server`) decides when to fork.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from sandbox import bootstrap, events
from sandbox.errors import SandboxError
from sandbox.policy import SandboxPolicy
from sandbox.process import arm_parent_death_signal


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What the host asked the fork-server to run, validated before the fork."""

    policy: SandboxPolicy
    entry_module: str
    entry_args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str


def run_worker(
    spec: WorkerSpec, stdio_fds: Sequence[int], close_inherited: Callable[[], None]
) -> NoReturn:
    """Become the worker described by `spec`, run its entry module, and exit; never return.

    `stdio_fds` are the worker's stdin, stdout and stderr (all >= 3); `close_inherited` closes
    the fork-server's own objects without touching state shared with it. Set-up failures are
    reported as the bootstrap reports them: one JSON line on stderr, exit status 78 (refused)
    or 70 (failed).
    """
    status = events.EXIT_FAILED
    try:
        _become_worker(spec, stdio_fds, close_inherited)
        status = _run_entry(spec.entry_module)
    except SandboxError as exc:
        events.emit("error", "sandbox_refused", layer=getattr(exc, "layer", None), reason=str(exc))
        status = events.EXIT_REFUSED
    except BaseException as exc:  # nothing may escape into the fork-server's loop
        events.emit("error", "sandbox_failed", reason=f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(status)


def _become_worker(
    spec: WorkerSpec, stdio_fds: Sequence[int], close_inherited: Callable[[], None]
) -> None:
    """Set the process up as the cold bootstrap would find it, then confine it."""
    os.setsid()
    # Armed at once so the worker cannot outlive the fork-server while it sets up; confine
    # arms it again last, after any credential change has cleared it.
    arm_parent_death_signal(spec.policy.host_pid)
    for target, fd in enumerate(stdio_fds):
        os.dup2(fd, target)
    close_inherited()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # sys.stdin/stdout/stderr stay as the fork-server built them at start-up, over pipes like
    # these (see forkserver_boot.launch), so they behave as a cold worker's would.
    os.environ.clear()
    os.environ.update(spec.env)
    tempfile: Any = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # re-read TMPDIR from the worker's environment
    try:
        os.chdir(spec.cwd)
    except OSError as exc:
        raise SandboxError(f"cannot enter {spec.cwd!r}: {exc.strerror}") from exc
    sys.argv[:] = [spec.entry_module, *spec.entry_args]
    sys.dont_write_bytecode = True
    bootstrap.confine_or_exit(spec.policy)


def _run_entry(entry_module: str) -> int:
    """Run `entry_module` as `__main__`, then shut down like the interpreter; return the status.

    An uncaught KeyboardInterrupt ends the process with SIGINT, as CPython does.
    """
    interrupted = False
    try:
        bootstrap.run_as_main(entry_module)
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException as exc:  # the interpreter reports any uncaught error
        interrupted = isinstance(exc, KeyboardInterrupt)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        status = 1
    status = _finalize(status)
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def _exit_status(code: object) -> int:
    """Map a SystemExit code to an exit status the way the interpreter does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _finalize(status: int) -> int:
    """Join non-daemon threads, run atexit handlers and flush stdio, as Py_FinalizeEx would."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout and status == 0:
                status = 120  # what CPython returns when flushing stdout fails at exit
    return status
