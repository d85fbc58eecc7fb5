"""Test doubles for the shipped plugins: a recording `http.request` host function, and helpers to
serve a bundle in-process or start it as a real worker process."""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from plugins.sdk.testing import serve_bundle
from protocol import HTTP_REQUEST_METHOD, Endpoint, HttpRequest, HttpResponse, InitializeResult
from runner.spawn import ColdSpawner, unconfined
from runner.worker import PluginWorker, WorkerSpec

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"


class FakeHttp:
    """An `http.request` host function: records each request, answers from a script in order."""

    def __init__(self, *answers: HttpResponse | Exception) -> None:
        self.requests: list[HttpRequest] = []
        self._answers = list(answers)

    async def __call__(self, params: Any) -> HttpResponse:
        self.requests.append(msgspec.convert(params, HttpRequest))
        answer = self._answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def only(self) -> HttpRequest:
        """The single request made (fails the test if there were more or fewer)."""
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


def json_answer(status: int, body: Any, headers: Mapping[str, str] | None = None) -> HttpResponse:
    """A provider answer with a JSON body."""
    pairs = [("Content-Type", "application/json"), *(headers or {}).items()]
    return HttpResponse(status=status, headers=pairs, body=json.dumps(body).encode())


def header(request: HttpRequest, name: str) -> str | None:
    """The first header called `name` (case-insensitive) in a recorded request."""
    return next((v for k, v in request.headers if k.lower() == name.lower()), None)


def basic_auth(user: str, password: str) -> str:
    """The Authorization value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """Split a multipart/form-data body into its parts, with the stdlib's MIME parser."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    assert message.is_multipart()
    assert not message.defects, message.defects
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        parts.append(
            Part(
                name=name,
                filename=part.get_filename(),
                content_type=part.get_content_type(),
                data=payload,
            )
        )
    return parts


@contextlib.asynccontextmanager
async def serve(
    bundle: str, plugin_id: str, config: Mapping[str, Any], http: FakeHttp | None = None
) -> AsyncIterator[tuple[Endpoint, InitializeResult]]:
    """Serve `plugins/<bundle>` in-process with `http` as its `http.request` host function."""
    functions = {} if http is None else {HTTP_REQUEST_METHOD: http}
    async with serve_bundle(
        PLUGINS / bundle, plugin_id=plugin_id, config=config, host_functions=functions
    ) as session:
        yield session


async def start_real_worker(bundle: str, plugin_id: str, config: Mapping[str, Any]) -> PluginWorker:
    """Start `plugins/<bundle>` as a plain worker process with the host's default functions."""
    spec = WorkerSpec(
        plugin_id=plugin_id,
        tenant_id="tenant-a",
        launch=unconfined(
            str(PLUGINS / bundle),
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)},
        ),
        config=config,
    )
    return await PluginWorker.start(spec, ColdSpawner())
