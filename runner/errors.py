"""Errors raised by the host package; the HTTP layer maps them to responses in one place."""

from __future__ import annotations


class RunnerError(Exception):
    """Root of every error raised by the runner package."""


class WorkerStartError(RunnerError):
    """A worker could not be started or failed its handshake; `stderr_tail` holds its last lines."""

    def __init__(self, plugin_id: str, reason: str, stderr_tail: list[str] | None = None) -> None:
        super().__init__(f"{plugin_id}: worker failed to start: {reason}")
        self.plugin_id = plugin_id
        self.reason = reason
        self.stderr_tail = stderr_tail or []
