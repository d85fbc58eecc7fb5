"""The fork-server's control channel: JSON messages over a SOCK_SEQPACKET unix socketpair.

Both the host (`sandbox.forkserver`) and the fork-server process (`sandbox.forkserver_server`)
use these helpers; the socket I/O itself (blocking there, non-blocking on the host) stays with them.
Each datagram is one UTF-8 JSON object; file descriptors ride along as SCM_RIGHTS.

Host to fork-server:
    {"op": "spawn", "id": int, "policy": str, "entry": str, "args": [str], "env": {str: str},
     "cwd": str}  + fds [stdin read end, stdout write end, stderr write end]
    {"op": "shutdown"}  kill and reap every worker, report their exits, then exit

Fork-server to host:
    {"op": "ready", "pid": int}  once, after preloading
    {"op": "fatal", "error": str}  instead of "ready" when start-up failed; the process exits
    {"op": "spawned", "id": int, "pid": int}  + fds [a pidfd of the worker]
    {"op": "failed", "id": int, "error": str}  the fork did not happen; the fds were closed
    {"op": "exited", "pid": int, "returncode": int}  after reaping; negative for a signal
"""

from __future__ import annotations

import array
import json
import socket
from typing import Any, Final

MAX_MESSAGE_BYTES: Final = 128 * 1024
MAX_FDS: Final = 3
SPAWN_FDS: Final = 3  # stdin, stdout, stderr of the worker
ANCILLARY_BYTES: Final = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def encode(message: dict[str, Any]) -> bytes:
    """Serialize one message; raises ValueError when it exceeds MAX_MESSAGE_BYTES."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"control message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """Parse one message; raises ValueError when it is not a JSON object with a string "op"."""
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed control message: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError("control message is not an object with an op")
    return message


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """Return the ancillary data that passes `fds` (none: an empty list)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Return the file descriptors carried by `ancdata` from `recvmsg`, in order."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % fds.itemsize
            fds.frombytes(data[:usable])
    return list(fds)
