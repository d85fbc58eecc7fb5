"""The worker runtime over a real channel, in-process (plugin logic, not isolation)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from plugins.sdk import Plugin, PluginDefinitionError
from plugins.sdk.testing import serve_bundle
from protocol import (
    INITIALIZE_METHOD,
    ErrorCode,
    InitializeParams,
    RemoteError,
)
from protocol.categories.input_validator import ValidationInput, ValidationResult
from protocol.categories.storage_backend import StorageKey, StoragePut, StorageValue

ECHO = Path(__file__).parents[1] / "fixtures" / "plugins" / "echo"
ECHO_ID = "dev.corral.test.echo"


async def test_handshake_reports_identity_categories_and_methods() -> None:
    async with serve_bundle(ECHO, plugin_id=ECHO_ID) as (_, info):
        assert (info.plugin_id, info.plugin_version, info.protocol_version) == (ECHO_ID, "1.0.0", 1)
        assert info.categories == ["storage_backend", "input_validator"]
        assert "storage_backend.put" in info.methods and "input_validator.validate" in info.methods


async def test_typed_calls_round_trip_structs() -> None:
    async with serve_bundle(ECHO, plugin_id=ECHO_ID) as (host, _):
        await host.request("storage_backend.put", StoragePut(key="k", value=b"\x00\xff"))
        got = await host.request(
            "storage_backend.get", StorageKey(key="k"), result_type=StorageValue
        )
        assert got == StorageValue(value=b"\x00\xff")


async def test_handlers_see_their_tenant_and_only_their_config() -> None:
    config = {"greeting": "hola"}
    async with serve_bundle(ECHO, plugin_id=ECHO_ID, tenant_id="t-9", config=config) as (host, _):
        result = await host.request(
            "input_validator.validate",
            ValidationInput(field="config", value=None),
            result_type=ValidationResult,
        )
    assert result.errors == ["t-9", "greeting=hola"]


async def test_a_plugin_exception_answers_plugin_error_without_its_message() -> None:
    async with serve_bundle(ECHO, plugin_id=ECHO_ID) as (host, _):
        with pytest.raises(RemoteError) as info:
            await host.request("input_validator.validate", {"field": "raise", "value": 0})
    assert info.value.code == ErrorCode.PLUGIN_ERROR
    assert "RuntimeError" in info.value.message and "secret" not in info.value.message


async def test_host_functions_answer_the_plugin() -> None:
    async def http(params: Any) -> Any:
        raise RemoteError(ErrorCode.EGRESS_DENIED, "host not in the manifest")

    async with serve_bundle(ECHO, plugin_id=ECHO_ID, host_functions={"http.request": http}) as (
        host,
        _,
    ):
        with pytest.raises(RemoteError) as info:
            await host.request("input_validator.validate", {"field": "http", "value": "https://x"})
    # The plugin did not catch the host's refusal, so it comes back with the host's own code.
    assert info.value.code == ErrorCode.EGRESS_DENIED


async def test_initialize_twice_is_refused() -> None:
    async with serve_bundle(ECHO, plugin_id=ECHO_ID) as (host, _):
        params = InitializeParams(protocol_version=1, tenant_id="t", plugin_id=ECHO_ID)
        with pytest.raises(RemoteError, match="already initialized"):
            await host.request(INITIALIZE_METHOD, params)


async def test_a_protocol_version_mismatch_names_both_versions() -> None:
    with pytest.raises(RemoteError) as info:
        async with serve_bundle(ECHO, plugin_id=ECHO_ID, protocol_version=99):
            pass
    assert info.value.code == ErrorCode.VERSION_MISMATCH
    assert "99" in info.value.message and "1" in info.value.message
    assert info.value.data == {"host": 99, "worker": 1}


async def test_a_worker_refuses_to_serve_another_plugin_id() -> None:
    with pytest.raises(RemoteError, match="serves 'dev.corral.test.echo'"):
        async with serve_bundle(ECHO, plugin_id="com.example.other"):
            pass


async def test_manifest_and_implementation_must_agree(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(ECHO, bundle)
    manifest = (bundle / "plugin.toml").read_text()
    (bundle / "plugin.toml").write_text(
        manifest.replace('kind = "input_validator"', 'kind = "audit_sink"')
    )
    with pytest.raises(RemoteError, match="manifest declares"):
        async with serve_bundle(bundle, plugin_id=ECHO_ID):
            pass


async def test_an_entrypoint_that_fails_to_import_is_a_plugin_error(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(ECHO, bundle)
    # A fresh module name: this harness runs in-process, where echo_plugin is already imported.
    manifest = (bundle / "plugin.toml").read_text().replace('"echo_plugin"', '"broken_plugin"')
    (bundle / "plugin.toml").write_text(manifest)
    (bundle / "broken_plugin.py").write_text("raise ImportError('nope')\n")
    with pytest.raises(RemoteError) as info:
        async with serve_bundle(bundle, plugin_id=ECHO_ID):
            pass
    assert info.value.code == ErrorCode.PLUGIN_ERROR and "ImportError" in info.value.message


def test_a_category_class_must_implement_every_method_as_async() -> None:
    plugin = Plugin()
    with pytest.raises(PluginDefinitionError, match="lacks storage_backend.list"):

        @plugin.category("storage_backend")
        class Partial:
            async def get(self, args: object) -> None: ...
            async def put(self, args: object) -> None: ...
            async def delete(self, args: object) -> None: ...

    with pytest.raises(PluginDefinitionError, match="must be `async def`"):

        @plugin.category("input_validator")
        class Sync:
            def validate(self, args: object) -> None: ...

    with pytest.raises(PluginDefinitionError, match="unknown category"):
        plugin.category("teleport")(type("X", (), {}))
