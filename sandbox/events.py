"""The JSON lines the child writes on stderr about its own confinement.

Written by the bootstrap (and a fork-server child) before the plugin runs; the host reads stderr
line by line, so each event is exactly one line. Nothing here ever touches fd 1.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

EXIT_REFUSED: Final = 78  # EX_CONFIG: a required layer is missing, or the policy is invalid
EXIT_FAILED: Final = 70  # EX_SOFTWARE: the sandbox itself failed unexpectedly


def warning_text(layer: str, reason: str) -> str:
    """Format a permissive-mode warning as `confine.apply` returns it: "<layer>: <reason>"."""
    return f"{layer}: {reason}"


def split_warning(text: str) -> tuple[str, str]:
    """Split a warning made by `warning_text` back into (layer, reason)."""
    layer, _, reason = text.partition(": ")
    return layer, reason


def line(level: str, event: str, **fields: Any) -> str:
    """Return one event as a JSON line (with the trailing newline)."""
    record = {"level": level, "event": event, **fields}
    return json.dumps(record, separators=(",", ":"), default=str) + "\n"


def emit(level: str, event: str, **fields: Any) -> None:
    """Write one event to fd 2 in a single write, bypassing any `sys.stderr` replacement."""
    data = line(level, event, **fields).encode("utf-8", "replace")
    while data:
        try:
            written = os.write(2, data)
        except InterruptedError:
            continue
        except OSError:
            return  # nobody reads stderr any more; there is no one left to tell
        data = data[written:]
