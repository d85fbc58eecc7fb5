"""Worker-side logging: one JSON object per line on stderr, which the host re-logs.

The host adds the plugin id and the worker pid; the worker only says what happened.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

_FIELDS: Final = ("tenant_id", "plugin_id", "method")


class JsonLineFormatter(logging.Formatter):
    """Format a record as `{"t", "level", "logger", "msg", ...}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "t": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON lines (replacing any earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
