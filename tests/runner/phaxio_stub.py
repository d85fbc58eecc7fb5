"""A Phaxio v2.1 stand-in on 127.0.0.1, and helpers for driving the shipped phaxio_fax plugin
through a real service: the egress settings that point api.phaxio.com at the stub, callback
signing (written out here, independently of core), and per-activation call counts.

The stub records what it received (method, path, Host, Authorization, form fields and files) and
answers like Phaxio: `{"success": ..., "message": ..., "data": ...}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.runner.api_harness import Api

# Recipients and fax ids the stub treats specially.
INVALID_NUMBER = "+15550009999"  # send_fax: 422, as Phaxio answers a number it cannot dial
FAILED_FAX_ID = "4040"  # get_status: a fax that failed on a busy line
UNKNOWN_FAX_ID = "4044"  # get_status: 404 Fax not found
FIRST_FAX_ID = 9001


@dataclass(frozen=True)
class ReceivedFile:
    """A file part the stub received."""

    filename: str | None
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Received:
    """One request the stub received."""

    method: str
    path: str
    host: str
    authorization: str | None
    fields: dict[str, str]
    files: dict[str, ReceivedFile]


@dataclass
class PhaxioStub:
    """The running stub: its origin (`http://127.0.0.1:<port>`) and what it received."""

    origin: str
    received: list[Received] = field(default_factory=list)
    fax_ids: list[int] = field(default_factory=list)  # the ids send_fax handed out, in order

    def egress_environ(self, *extra_hosts: str) -> dict[str, str]:
        """Operator settings that route api.phaxio.com (and `extra_hosts`) to this stub."""
        overrides = ",".join(f"{h}={self.origin}" for h in ("api.phaxio.com", *extra_hosts))
        return {
            "CORRAL_EGRESS_HOST_OVERRIDES": overrides,
            "CORRAL_EGRESS_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        }

    async def _record(self, request: web.Request) -> Received:
        fields: dict[str, str] = {}
        files: dict[str, ReceivedFile] = {}
        if request.method == "POST":
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files[name] = ReceivedFile(
                        value.filename, value.content_type, value.file.read()
                    )
                else:
                    fields[name] = str(value)
        received = Received(
            request.method,
            request.path,
            request.host,
            request.headers.get("Authorization"),
            fields,
            files,
        )
        self.received.append(received)
        return received

    async def send_fax(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        if received.fields.get("to") == INVALID_NUMBER:
            return _answer(422, False, f"Phone number {INVALID_NUMBER} is not valid")
        self.fax_ids.append(FIRST_FAX_ID + len(self.fax_ids))
        return _answer(200, True, "Fax queued for sending", {"id": self.fax_ids[-1]})

    async def get_fax(self, request: web.Request) -> web.Response:
        await self._record(request)
        fax_id = request.match_info["fax_id"]
        if fax_id == UNKNOWN_FAX_ID:
            return _answer(404, False, "Fax not found")
        if fax_id == FAILED_FAX_ID:
            recipient = {
                "phone_number": "+15551234567",
                "status": "failure",
                "error_type": "lineError",
                "error_id": 34,
                "error_message": "Busy line at +15551234567",
            }
            return _answer(200, True, "ok", fax_resource(int(fax_id), "failure", [recipient]))
        return _answer(200, True, "ok", fax_resource(int(fax_id), "success"))


def fax_resource(
    fax_id: int, status: str, recipients: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A fax as Phaxio's GET /v2.1/faxes/{id} (and its status callback) describes it."""
    return {
        "id": fax_id,
        "direction": "sent",
        "num_pages": 2,
        "status": status,
        "is_test": True,
        "recipients": recipients or [{"phone_number": "+15551234567", "status": status}],
        "error_type": None,
        "error_id": None,
        "error_message": None,
    }


def _answer(status: int, success: bool, message: str, data: Any = None) -> web.Response:
    body: dict[str, Any] = {"success": success, "message": message}
    if data is not None:
        body["data"] = data
    return web.json_response(body, status=status)


@asynccontextmanager
async def running_phaxio_stub() -> AsyncIterator[PhaxioStub]:
    """Serve the stub on 127.0.0.1 (a free port) until the block ends."""
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    stub = PhaxioStub(origin="")
    app.router.add_post("/v2.1/faxes", stub.send_fax)
    app.router.add_get("/v2.1/faxes/{fax_id}", stub.get_fax)
    await server.start_server()
    stub.origin = f"http://127.0.0.1:{server.port}"
    try:
        yield stub
    finally:
        await server.close()


def callback_body(fax: dict[str, Any]) -> bytes:
    """A Phaxio-style status callback body: form fields, the fax as JSON in `fax`."""
    fields = {"success": "true", "is_test": "true", "direction": "sent", "fax": json.dumps(fax)}
    return urlencode(fields).encode()


def phaxio_signature(token: str, body: bytes) -> str:
    """The route's scheme (issue 6): hex HMAC-SHA256 of the raw body, keyed with the token."""
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def calls(api: Api, tenant: str, plugin_id: str) -> int:
    """How many calls the activation's workers have taken so far."""
    for status in api.service.host.supervisor.statuses():
        if (status.tenant_id, status.plugin_id) == (tenant, plugin_id):
            return sum(slot.calls for slot in status.slots)
    raise AssertionError(f"{plugin_id} is not active for {tenant}")
