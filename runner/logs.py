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
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
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
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                yield name, value

    def replace(self, changes: Mapping[str, Any]) -> LogContext:
        """Return a copy with `changes` applied; TypeError on a name that is not a field.

        `dataclasses.replace` does the same in ~3x the time; this runs on every request.
        """
        if not changes.keys() <= _FIELD_SET:
            unknown = ", ".join(sorted(changes.keys() - _FIELD_SET))
            raise TypeError(f"LogContext has no field(s) {unknown}")
        get = changes.get
        return LogContext(
            get("request_id", self.request_id),
            get("tenant", self.tenant),
            get("plugin", self.plugin),
            get("worker_pid", self.worker_pid),
        )


_FIELDS: Final = tuple(f.name for f in fields(LogContext))
_FIELD_SET: Final = frozenset(_FIELDS)
_NO_CONTEXT: Final = LogContext()  # frozen: safe to share as the default
_CONTEXT: Final = contextvars.ContextVar("corral_log_context", default=_NO_CONTEXT)


def current_log_context() -> LogContext:
    """Return the context records logged now are stamped with."""
    return _CONTEXT.get()


def set_log_context(**changes: Any) -> contextvars.Token[LogContext]:
    """Change fields of the current context; undo with `reset_log_context(token)`.

    Tasks created afterwards inherit the change; tasks created before do not see it.
    """
    return _CONTEXT.set(_CONTEXT.get().replace(changes))


def bind_log_context(**changes: Any) -> None:
    """Change fields of the current context for the rest of it (an enclosing scope resets)."""
    _CONTEXT.set(_CONTEXT.get().replace(changes))


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
    attributes = record.__dict__
    if attributes.keys() - _STANDARD:  # most records have no extras: one set difference
        for key, value in attributes.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            name = _ALIASES.get(key, key)
            out[name] = MASK if SENSITIVE_KEY.search(name) else redact(value)
    return out


class _SecondText:
    """The last whole second formatted as `YYYY-MM-DDTHH:MM:SS` (log lines come in bursts)."""

    last: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    """Return the record's time as RFC 3339 UTC with milliseconds (`...T12:00:00.123Z`)."""
    # As `datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`: rounded to
    # the microsecond, then truncated to the millisecond; the date and time are formatted once
    # per second (one tuple, so threads that log race harmlessly).
    fraction, whole = math.modf(record.created)
    second, micros = divmod(int(whole) * 1_000_000 + round(fraction * 1_000_000), 1_000_000)
    cached_second, text = _SecondText.last
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SecondText.last = (second, text)
    return f"{text}.{micros // 1000:03d}Z"


# `json.dumps(..., default=str)` builds an encoder per call; this one is built once.
_JSON: Final = json.JSONEncoder(default=str)
_quote: Final = json.encoder.encode_basestring_ascii  # what _JSON does to every str


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, event, logger, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record's JSON line (no newline inside: JSON escapes them)."""
        event = record.getMessage()
        if not (record.exc_info or record.stack_info or record.__dict__.keys() - _STANDARD):
            fast = _plain_line(record, event)
            if fast is not None:
                return fast
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "event": event,
            "logger": record.name,
        }
        for key, value in record_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _JSON.encode(line)


def _plain_line(record: logging.LogRecord, event: str) -> str | None:
    """Return the JSON line of a record with no extras, as `_JSON` would; None if it cannot.

    Most lines (every access line) are four strings and the context's strings and integers:
    written here directly, a third of the time `JSONEncoder.encode` takes for the same dict.
    """
    parts = [
        f'{{"time": "{_timestamp(record)}", "level": {_quote(record.levelname.lower())}, '
        f'"event": {_quote(event)}, "logger": {_quote(record.name)}'
    ]
    context = _CONTEXT.get()
    for name in _FIELDS:
        value = getattr(context, name)
        if value is None:
            continue
        if type(value) is str:
            parts.append(f', "{name}": {_quote(value)}')
        elif type(value) is int:
            parts.append(f', "{name}": {int.__repr__(value)}')
        else:
            return None  # not what LogContext's fields hold: let the encoder decide
    parts.append("}")
    return "".join(parts)


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
