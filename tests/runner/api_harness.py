"""A real corral service for admin API tests: store, audit, sandboxed workers, and a client.

Every answer the client gets is checked against the OpenAPI document the service serves: the
route and status must be documented, and the body must fit the documented schema.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from runner.keys import ALL_SCOPES, Scope
from runner.ratelimit import RateLimitSettings
from runner.service import Service, ServiceSettings
from tests.fixtures.install.builders import bundle_files, checksum_of, write_dir, write_zip

REPO = Path(__file__).resolve().parents[2]
TWILIO = "dev.corral.twilio-sms"
PHAXIO = "dev.corral.phaxio-fax"
DEMO = "dev.corral.test.demo"
HOOKS = "dev.corral.test.hooks"
HOOKS_FIXTURE = REPO / "tests" / "fixtures" / "plugins" / "hooks"
NOISY = "dev.corral.test.noisy"
NOISY_FIXTURE = REPO / "tests" / "fixtures" / "plugins" / "noisy"
GENEROUS = RateLimitSettings(
    reads_per_minute=100_000, writes_per_minute=100_000, failed_auth_per_minute=100_000
)
_PARAM = re.compile(r"\{[^}]+\}")


@dataclass
class Answer:
    """One HTTP answer: status, headers, parsed JSON body (or None), and the raw text."""

    status: int
    headers: Mapping[str, str]
    body: Any
    text: str


@dataclass
class Api:
    """The service, a client to it, the bootstrap key, and the bundles a test may install."""

    service: Service
    client: TestClient[Any, Any]
    key: str
    state: Path
    demo_zip: Path
    demo_dir: Path
    hooks_dir: Path
    openapi: dict[str, Any] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = "bootstrap",
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        check_documented: bool = True,
    ) -> Answer:
        """Send a request (with the bootstrap key unless `key` says otherwise) and check it."""
        sent = dict(headers or {})
        if key is not None:
            sent["X-API-Key"] = self.key if key == "bootstrap" else key
        response = await self.client.request(method, path, json=json_body, data=data, headers=sent)
        text = await response.text()
        self.answers.append(text + json.dumps(dict(response.headers)))
        body = json.loads(text) if response.content_type == "application/json" else None
        answer = Answer(response.status, response.headers, body, text)
        if check_documented and self.openapi:
            check_against_openapi(self.openapi, method, path, answer)
        return answer

    async def new_key(
        self, scopes: frozenset[Scope] = ALL_SCOPES, tenant_id: str | None = None
    ) -> str:
        """Create a key directly in the store and return it."""
        _, key = await self.service.keys.create("test", scopes, tenant_id, by=None)
        return key

    def upload(self, path: Path) -> FormData:
        """Return a multipart form with the file as the `bundle` field."""
        form = FormData()
        form.add_field("bundle", path.read_bytes(), filename=path.name)
        return form


def check_against_openapi(doc: dict[str, Any], method: str, path: str, answer: Answer) -> None:
    """Fail unless the route, method and status are documented and the body fits the schema."""
    bare = path.split("?", 1)[0]
    templates = [t for t in doc["paths"] if _matches(t, bare)]
    assert templates, f"{method} {bare} is not in the OpenAPI document"
    operation = doc["paths"][templates[0]].get(method.lower())
    assert operation is not None, f"{method} {templates[0]} is not documented"
    documented = operation["responses"].get(str(answer.status))
    assert documented is not None, f"{method} {templates[0]} answered undocumented {answer.status}"
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if schema is not None:
        resolvable = {**schema, "components": doc["components"]}
        jsonschema.Draft202012Validator(resolvable).validate(answer.body)


def _matches(template: str, path: str) -> bool:
    wanted, given = template.split("/"), path.split("/")
    return len(wanted) == len(given) and all(
        w == g or (_PARAM.fullmatch(w) is not None and g)
        for w, g in zip(wanted, given, strict=True)
    )


def _checksums(lines: dict[Path, str]) -> str:
    return "".join(f"{digest}  {path}\n" for path, digest in lines.items())


@asynccontextmanager
async def running_api(
    state: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    rate_limits: RateLimitSettings = GENEROUS,
) -> AsyncIterator[Api]:
    """Start a service over `state` (a fresh dir by default) and yield a client to it.

    The operator trusts the shipped plugins and a demo plugin (a directory and a zip of it).
    """
    own_state = state is None
    if state is None:
        state = Path(tempfile.mkdtemp(prefix="corral-api-", dir="/tmp"))
        os.chmod(state, 0o755)
    bundles = state / "bundles"
    if not bundles.exists():
        files = bundle_files(DEMO)
        write_dir(bundles / "demo", files)
        write_zip(bundles / "demo.zip", files)
        shutil.copytree(
            HOOKS_FIXTURE, bundles / "hooks", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copytree(
            NOISY_FIXTURE, bundles / "noisy", ignore=shutil.ignore_patterns("__pycache__")
        )
        trusted = {
            REPO / "plugins" / "twilio_sms": checksum_of(REPO / "plugins" / "twilio_sms"),
            REPO / "plugins" / "phaxio_fax": checksum_of(REPO / "plugins" / "phaxio_fax"),
            bundles / "demo": checksum_of(bundles / "demo"),
            bundles / "demo.zip": checksum_of(bundles / "demo.zip"),
            bundles / "hooks": checksum_of(bundles / "hooks"),
            bundles / "noisy": checksum_of(bundles / "noisy"),
        }
        (state / "checksums.txt").write_text(_checksums(trusted))
        allowlist = (REPO / "allowlist.toml").read_text()
        for plugin_id in (DEMO, HOOKS, NOISY):
            allowlist += f'\n[[plugin]]\nid = "{plugin_id}"\nversions = ">=1.0.0"\n'
        (state / "allowlist.toml").write_text(allowlist)
    env = {
        "CORRAL_CONFIG_PATH": str(state / "config" / "corral.config.json"),
        "CORRAL_AUDIT_FSYNC": "false",
        **(environ or {}),
    }
    settings = ServiceSettings.from_env(state, env)
    host = replace(
        settings.host,
        allowlist_path=state / "allowlist.toml",
        checksums_path=state / "checksums.txt",
    )
    settings = replace(settings, host=host, rate_limits=rate_limits)
    service = await Service.start(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(service.app))
    try:
        await client.start_server()
        key_file = settings.bootstrap_key_path
        api = Api(
            service,
            client,
            key_file.read_text().strip(),
            state,
            bundles / "demo.zip",
            bundles / "demo",
            bundles / "hooks",
        )
        api.openapi = (await api.call("GET", "/api/v1/openapi.json", check_documented=False)).body
        yield api
    finally:
        await client.close()
        await service.close()
        if own_state:
            shutil.rmtree(state, ignore_errors=True)
