"""A null `webhook_handler` for bench/webhook.py: every request gets 200 and `ok`.

It does no work of its own, so a benchmark request measures the host, the wire and the worker
runtime; the bare aiohttp handler it is compared with answers the same bytes.
"""

from __future__ import annotations

from plugins.sdk import Context, Plugin
from plugins.sdk.categories import WebhookRequest, WebhookResponse

plugin = Plugin()

_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}


@plugin.category("webhook_handler")
class NullHook:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def handle(self, request: WebhookRequest) -> WebhookResponse:
        return WebhookResponse(status=200, headers=_HEADERS, body=b"ok")
