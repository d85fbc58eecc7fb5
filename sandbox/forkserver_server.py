"""The fork-server process: a single-threaded loop that forks workers from a preloaded interpreter.

`sandbox.forkserver.ForkServer` runs `main` in `python -I -S` with its config as JSON. It
never confines itself (a child can only tighten its parent's Landlock policy), never starts a
thread, and reaps every worker it forks; the worker's own set-up is `sandbox.forkserver_child`'s.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys
from dataclasses import replace
from typing import Any, Final

from sandbox.forkserver_child import WorkerSpec, run_worker
from sandbox.forkserver_wire import (
    ANCILLARY_BYTES,
    MAX_MESSAGE_BYTES,
    SPAWN_FDS,
    decode,
    encode,
    received_fds,
    rights,
)
from sandbox.policy import SandboxPolicy
from sandbox.process import arm_parent_death_signal

BOOT_FAILED_EXIT: Final = 70
_CHILD_IMPORTS: Final = ("importlib.util", "types")  # what bootstrap.run_as_main imports


class _RequestError(Exception):
    """A spawn request was malformed; the fork did not happen."""


class _Server:
    """The fork-server's state: the control socket, its selector and the live workers."""

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self._selector = selectors.DefaultSelector()
        self._selector.register(control, selectors.EVENT_READ, None)
        self._workers: dict[int, int] = {}  # pid -> pidfd, until reaped
        self._is_serving = True
        self._is_host_connected = True
        self.pid = os.getpid()

    def serve(self) -> None:
        """Handle requests and reap workers until the host shuts us down or goes away."""
        while self._is_serving:
            for key, _ in self._selector.select():
                if key.data is None:
                    self._on_control()
                else:
                    self._reap(key.data, block=False)
        self._stop_workers()

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        """Send one message; a host that is gone ends the loop instead of raising."""
        if not self._is_host_connected:
            return
        try:
            # Blocking: the host reads eagerly, and a host that stops reading is broken anyway.
            self._control.sendmsg([encode(message)], rights(fds or []))
        except OSError:
            self._hang_up()

    def _hang_up(self) -> None:
        """The host is gone: stop serving, and stop reporting to it."""
        self._is_host_connected = False
        self._is_serving = False

    def close_in_child(self) -> None:
        """Close our descriptors in a forked child without touching the shared epoll set."""
        self._selector.close()  # closes the child's epoll fd only; registrations are shared
        self._control.close()
        for pidfd in self._workers.values():
            os.close(pidfd)
        self._workers.clear()

    def _on_control(self) -> None:
        """Receive one message from the host and act on it."""
        try:
            data, ancdata, flags, _ = self._control.recvmsg(
                MAX_MESSAGE_BYTES, ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
            )
        except OSError:
            self._hang_up()
            return
        fds = received_fds(ancdata)
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ValueError("truncated control message")
            if not data:
                self._hang_up()
                return
            message = decode(data)
        except ValueError as exc:
            _close_all(fds)
            _log(f"ignored a control message: {exc}")
            return
        if message["op"] == "spawn":
            self._spawn(message, fds)
            return
        _close_all(fds)
        if message["op"] == "shutdown":
            self._is_serving = False
        else:
            _log(f"ignored a control message with op {message['op']!r}")

    def _spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        """Fork one worker for a spawn request and report its pid (and pidfd) or the failure.

        Takes ownership of `fds`: the parent closes them whatever happens.
        """
        request_id = message.get("id")
        try:
            spec = self._parse_spawn(message, fds)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except (_RequestError, OSError) as exc:
            _close_all(fds)
            self.send({"op": "failed", "id": request_id, "error": str(exc)})
            return
        if pid == 0:
            run_worker(spec, fds, self.close_in_child)
        _close_all(fds)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            # Not yet reaped, so the pid cannot have been reused: kill by pid is safe here.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.send({"op": "failed", "id": request_id, "error": f"pidfd_open: {exc}"})
            return
        self._workers[pid] = pidfd
        self._selector.register(pidfd, selectors.EVENT_READ, pid)
        self.send({"op": "spawned", "id": request_id, "pid": pid}, [pidfd])

    def _parse_spawn(self, message: dict[str, Any], fds: list[int]) -> WorkerSpec:
        """Validate a spawn request into a WorkerSpec; raise _RequestError if it is malformed."""
        if len(fds) != SPAWN_FDS:
            raise _RequestError(f"expected {SPAWN_FDS} fds, got {len(fds)}")
        try:
            policy = SandboxPolicy.from_json(message["policy"])
            args, env = message["args"], message["env"]
            spec = WorkerSpec(
                policy=replace(policy, host_pid=self.pid),  # PDEATHSIG is relative to us
                entry_module=str(message["entry"]),
                entry_args=tuple(str(arg) for arg in args),
                env={str(key): str(value) for key, value in env.items()},
                cwd=str(message["cwd"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _RequestError(f"malformed spawn request: {exc!r}") from exc
        return spec

    def _reap(self, pid: int, *, block: bool) -> None:
        """Collect a worker's exit status and report it; a worker still running is left alone."""
        try:
            reaped, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            reaped, status = pid, 255 << 8  # reaped by someone else: status unknown
        if reaped == 0:
            return
        pidfd = self._workers.pop(pid)
        self._selector.unregister(pidfd)
        os.close(pidfd)
        self.send({"op": "exited", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def _stop_workers(self) -> None:
        """SIGKILL every worker still running, reap them all and report their exits."""
        for pidfd in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        for pid in list(self._workers):
            self._reap(pid, block=True)


def _close_all(fds: list[int]) -> None:
    """Close every descriptor in `fds`."""
    for fd in fds:
        os.close(fd)


def _log(text: str) -> None:
    """Write one diagnostic line to stderr (the host's, or a worker's after set-up)."""
    try:
        sys.stderr.write(f"corral fork-server[{os.getpid()}]: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _boot(config: dict[str, Any], control: socket.socket) -> _Server:
    """Preload, arm PDEATHSIG against the host and freeze the heap; raise on any failure."""
    arm_parent_death_signal(int(config["host_pid"]))
    # sys.stdout was built over a pipe nobody reads; point fd 1 at /dev/null beneath it, so a
    # stray print() from a preloaded module neither fails nor lingers in the buffer that
    # every worker inherits and would flush into its RPC channel.
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(devnull, 1)
    os.close(devnull)
    for name in (*_CHILD_IMPORTS, *config["preload"]):
        __import__(name)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # forking a threaded process can deadlock the child on a held lock
        raise RuntimeError(f"preloading left {threads} threads running; a fork-server needs 1")
    # Freeze what preloading built, so a worker's first collection does not dirty shared pages.
    gc.freeze()
    gc.enable()
    return _Server(control)


def main(config: dict[str, Any]) -> int:
    """Boot the fork-server from its config and serve until the host leaves; return the status.

    The caller (`python -I -S -c`) has already set sys.path and disabled the collector, so no
    collection runs before the freeze: it would leave holes in pages the workers then fill.
    """
    control = socket.socket(fileno=int(config["control_fd"]))
    control.setblocking(True)
    try:
        server = _boot(config, control)
    except Exception as exc:  # reported to the host, which raises it there
        with contextlib.suppress(OSError):
            control.sendmsg([encode({"op": "fatal", "error": f"{exc!r}"})])
        return BOOT_FAILED_EXIT
    server.send({"op": "ready", "pid": server.pid})
    server.serve()
    return 0
