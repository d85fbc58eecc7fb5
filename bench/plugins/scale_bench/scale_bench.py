"""A `webhook_handler` for bench/scale.py: it answers with its tenant id and pid.

It does no work of its own, so a request measures the host, the wire and the worker runtime,
and the answer proves which activation's worker took it.
"""

from __future__ import annotations

import json
import os

from plugins.sdk import Context, Plugin
from plugins.sdk.categories import WebhookRequest, WebhookResponse

plugin = Plugin()


@plugin.category("webhook_handler")
class Who:
    def __init__(self, ctx: Context) -> None:
        self.body = json.dumps({"tenant": ctx.tenant_id, "pid": os.getpid()}).encode()

    async def handle(self, request: WebhookRequest) -> WebhookResponse:
        headers = {"Content-Type": "application/json"}
        return WebhookResponse(status=200, headers=headers, body=self.body)
