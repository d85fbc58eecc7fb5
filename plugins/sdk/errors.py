"""Errors a plugin raises to answer the host."""

from __future__ import annotations

from protocol import ErrorCode, RemoteError


class PluginError(RemoteError):
    """Raise in a handler to answer the host with `plugin_error` and your message (no traceback).

    Raised from `start()`, it fails the worker's start with this message.
    """

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(ErrorCode.PLUGIN_ERROR, message, data)
