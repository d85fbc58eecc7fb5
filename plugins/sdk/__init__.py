"""The author-facing SDK: declare a `Plugin`, implement its categories, get a `Context`.

Plugins import only this package (and `plugins.sdk.providers`, helpers for HTTP providers, or
`plugins.sdk.http_manifest`, the runtime of declarative HTTP providers; both are imported on demand
to keep worker start-up lean). The runtime is `plugins.sdk.worker`.
"""

from protocol import ErrorCode, HttpResponse, RemoteError

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
    *_category_names,
]
