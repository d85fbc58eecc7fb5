"""The author-facing SDK: declare a `Plugin`, implement its categories, get a `Context`.

Plugins import only this package. The worker runtime that serves them is `plugins.sdk.worker`.
"""

from protocol import ErrorCode, HttpResponse, RemoteError

from . import providers
from .categories import *  # noqa: F403 - the category structs are part of the SDK's surface
from .categories import __all__ as _category_names
from .context import Context, HttpClient
from .errors import PluginError
from .plugin import Plugin, PluginDefinitionError

__all__ = [
    "Context",
    "ErrorCode",
    "HttpClient",
    "HttpResponse",
    "Plugin",
    "PluginDefinitionError",
    "PluginError",
    "RemoteError",
    "providers",
    *_category_names,
]
