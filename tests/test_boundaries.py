"""Each package imports only what STYLE.md allows: checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = {
    "protocol": {"aiohttp", "sandbox", "runner", "plugins"},
    "sandbox": {"aiohttp", "msgspec", "protocol", "runner", "plugins"},
    "plugins.sdk": {"aiohttp", "sandbox", "runner"},
    "plugins.sdk.worker": {"aiohttp", "sandbox", "runner"},
    "plugins.sdk.http_manifest": {"aiohttp", "sandbox", "runner", "pydantic", "jsonschema"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    code = f"import json, sys; import {package}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & FORBIDDEN[package]
