"""The author-facing SDK: declare a `Plugin`, implement its categories, get a `Context`.

Plugins import only this package. The worker runtime that serves them is `plugins.sdk.worker`.
"""

from protocol import ErrorCode, HttpResponse, RemoteError

from .categories import *  # noqa: F403 - the category structs are part of the SDK's surface
from .categories import __all__ as _category_names
from .context import Context, HttpClient
from .plugin import Plugin, PluginDefinitionError


class PluginError(RemoteError):
    """Raise in a handler to answer the host with `plugin_error` and your message (no traceback)."""

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(ErrorCode.PLUGIN_ERROR, message, data)


__all__ = [
    "Context",
    "ErrorCode",
    "HttpClient",
    "HttpResponse",
    "Plugin",
    "PluginDefinitionError",
    "PluginError",
    "RemoteError",
    *_category_names,
]
