"""Host logging: one JSON object per line (or a readable line on a terminal), with context.

`configure_logging` installs one stderr handler on the root logger. Each record carries the time
(RFC 3339, UTC), level, event (the message), logger, the request id, tenant, plugin and worker pid
of the context it was logged in (set with `log_context` by the request middleware and the worker
code), and the structured extras passed with `extra=`. Extras whose key names a body, payload or
credential are masked: what may hold patient data or secrets never reaches a log line.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Final, Literal, TextIO

LogFormat = Literal["json", "text"]
FORMAT_ENV: Final = "CORRAL_LOG_FORMAT"
LEVEL_ENV: Final = "CORRAL_LOG_LEVEL"
MASK: Final = "***"
# Extras under any key matching this are masked, at any depth (`client_secret`, `raw_body`, ...).
SENSITIVE_KEY: Final = re.compile(
    r"body|payload|secret|passw|token|api_?key|authori[sz]ation|cookie|credential|^key$",
    re.IGNORECASE,
)
_ALIASES: Final = {"tenant_id": "tenant", "plugin_id": "plugin", "pid": "worker_pid"}
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


@dataclass(frozen=True, slots=True)
class LogContext:
    """What every record logged in this context is about (None: not known here)."""

    request_id: str | None = None
    tenant: str | None = None
    plugin: str | None = None
    worker_pid: int | None = None

    def items(self) -> Iterator[tuple[str, str | int]]:
        """Yield the fields that are set, in a stable order."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value


_NO_CONTEXT: Final = LogContext()  # frozen: safe to share as the default
_CONTEXT: Final = contextvars.ContextVar("corral_log_context", default=_NO_CONTEXT)


def current_log_context() -> LogContext:
    """Return the context records logged now are stamped with."""
    return _CONTEXT.get()


def set_log_context(**changes: Any) -> contextvars.Token[LogContext]:
    """Change fields of the current context; undo with `reset_log_context(token)`.

    Tasks created afterwards inherit the change; tasks created before do not see it.
    """
    return _CONTEXT.set(replace(_CONTEXT.get(), **changes))


def bind_log_context(**changes: Any) -> None:
    """Change fields of the current context for the rest of it (an enclosing scope resets)."""
    _CONTEXT.set(replace(_CONTEXT.get(), **changes))


def reset_log_context(token: contextvars.Token[LogContext]) -> None:
    """Restore the context as it was before the `set_log_context` that returned `token`."""
    _CONTEXT.reset(token)


@contextlib.contextmanager
def log_context(**changes: Any) -> Iterator[LogContext]:
    """Within the block (and in tasks created in it), stamp records with `changes` too."""
    token = set_log_context(**changes)
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


def redact(value: Any) -> Any:
    """Return `value` with every mapping entry under a sensitive key replaced by `***`."""
    if isinstance(value, Mapping):
        return {
            str(k): MASK if SENSITIVE_KEY.search(str(k)) else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return value


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the context fields and the (redacted) extras of `record`, without the basics."""
    out: dict[str, Any] = dict(_CONTEXT.get().items())
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        name = _ALIASES.get(key, key)
        out[name] = MASK if SENSITIVE_KEY.search(name) else redact(value)
    return out


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, event, logger, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record's JSON line (no newline inside: JSON escapes them)."""
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key, value in record_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """Format a record as `time LEVEL logger: event key=value ...` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record's line (a traceback, if any, follows on its own lines)."""
        pairs = " ".join(
            f"{key}={json.dumps(value, default=str) if not isinstance(value, str | int) else value}"
            for key, value in record_fields(record).items()
        )
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if pairs:
            line = f"{line}  {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Write to whatever `sys.stderr` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def configure_logging(
    format: str | None = None,
    level: str | int | None = None,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] = os.environ,
    force: bool = False,
) -> LogFormat:
    """Send every record to stderr (or `stream`) as JSON lines or readable text; return which.

    `format` (`json` or `text`) defaults to `CORRAL_LOG_FORMAT`, else text when the stream is a
    terminal and JSON when it is not. `level` (a name or number) defaults to `CORRAL_LOG_LEVEL`,
    else INFO. An unknown value falls back to the default and is logged as a warning. Like
    `logging.basicConfig`, a root logger that already has handlers (an embedding program, a
    test runner) is left alone unless `force`.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return "text"
    problems: list[str] = []
    target = stream if stream is not None else sys.stderr
    chosen = _format_of(format if format is not None else environ.get(FORMAT_ENV), problems)
    if chosen is None:
        chosen = "text" if _is_terminal(target) else "json"
    handler: logging.StreamHandler[TextIO] = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level_of(level if level is not None else environ.get(LEVEL_ENV), problems))
    for problem in problems:
        logging.getLogger(__name__).warning("%s", problem)
    return chosen


def _format_of(value: str | None, problems: list[str]) -> LogFormat | None:
    text = (value or "").strip().lower()
    if text in ("json", "text"):
        return "json" if text == "json" else "text"
    if text not in ("", "auto"):
        problems.append(f"{FORMAT_ENV}={value!r} is not json or text; choosing by the terminal")
    return None


def _level_of(value: str | int | None, problems: list[str]) -> int:
    if isinstance(value, int):
        return value
    text = (value or "").strip().upper()
    if not text:
        return logging.INFO
    if text.isdigit():
        return int(text)
    level = logging.getLevelNamesMapping().get(text)
    if level is None:
        problems.append(f"{LEVEL_ENV}={value!r} is not a level name; using INFO")
        return logging.INFO
    return level


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


__all__ = [
    "FORMAT_ENV",
    "LEVEL_ENV",
    "JsonFormatter",
    "LogContext",
    "TextFormatter",
    "bind_log_context",
    "configure_logging",
    "current_log_context",
    "log_context",
    "redact",
    "reset_log_context",
    "set_log_context",
]
