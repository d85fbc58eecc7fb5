"""Faxbot registry entries with an HTTP manifest, written out as installable corral bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plugins.sdk import FaxJob, FaxQuery, SendFax
from plugins.sdk.http_manifest import check_bundle
from plugins.sdk.testing import serve_bundle
from protocol import HTTP_REQUEST_METHOD, load_manifest
from runner.digest import tree_digest
from runner.http_manifest_bundle import HttpManifestBundleError, write_bundle
from tests.plugins.fakes import FakeHttp, basic_auth, header, json_answer, parse_multipart

TO = "+15551234567"


def faxbot_entry(**manifest_changes: Any) -> dict[str, Any]:
    """A registry entry in Faxbot's shape, its manifest in Faxbot's HTTP-manifest dialect."""
    manifest: dict[str, Any] = {
        "id": "acmefax",
        "name": "Acme Fax",
        "auth": {"scheme": "basic"},
        "traits": {"kind": "cloud", "requires_ghostscript": True},
        "allowed_domains": ["api.acmefax.example"],
        "timeout_ms": 20000,
        "actions": {
            "send_fax": {
                "method": "POST",
                "url": "https://api.acmefax.example/v1/faxes",
                "headers": {"Accept": "application/json"},
                "body": {
                    "kind": "multipart",
                    "template": {
                        "to": "{{to}}",
                        "from": "{{settings.from_number}}",
                        "file": "{{file}}",
                    },
                },
                "path_params": [],
                "response": {
                    "job_id": "data.id",
                    "status": "data.status",
                    "error": "message",
                    "status_map": {"queued": "queued", "sent": "SUCCESS", "error": "FAILED"},
                },
            },
            "get_status": {
                "method": "GET",
                "url": "https://api.acmefax.example/v1/faxes/{{job_id}}",
                "response": {"job_id": "data.id", "status": "data.status"},
            },
        },
    }
    manifest.update(manifest_changes)
    return {
        "id": "acmefax",
        "name": "Acme Fax",
        "type": "outbound",
        "version": "1.2.0",
        "description": "Acme's cloud fax API.",
        "homepage": "https://acmefax.example/docs",
        "manifest": manifest,
    }


def test_a_faxbot_entry_becomes_a_valid_bundle(tmp_path: Path) -> None:
    out = write_bundle(faxbot_entry(), tmp_path / "acme")
    assert sorted(p.name for p in out.iterdir()) == [
        "http_acmefax.py",
        "plugin.toml",
        "provider.json",
    ]
    manifest = load_manifest(out)
    assert (manifest.id, manifest.version, manifest.display_name) == (
        "local.http.acmefax",
        "1.2.0",
        "Acme Fax",
    )
    assert manifest.entrypoint == "http_acmefax"
    assert manifest.permissions == ["network.outbound:api.acmefax.example"]
    assert [c.kind for c in manifest.categories] == ["outbound_fax"]
    config = {f.name: (f.required, f.secret) for f in manifest.config}
    assert config == {
        "api_key": (True, False),
        "api_secret": (True, True),
        "from_number": (False, False),
    }
    provider = check_bundle(out)
    assert sorted(provider.actions) == ["get_status", "send_fax"]
    assert provider.actions["send_fax"].status_map["sent"] == "success"
    assert provider.actions["send_fax"].timeout_s == 20.0
    tree_digest(out)  # digestible, so `corral plugins checksum` can approve it


async def test_the_written_bundle_sends_and_follows_a_fax(tmp_path: Path) -> None:
    out = write_bundle(faxbot_entry(), tmp_path / "acme")
    http = FakeHttp(
        json_answer(200, {"data": {"id": 77, "status": "queued"}}),
        json_answer(200, {"data": {"id": 77, "status": "sent"}}),
    )
    config = {"api_key": "ak-1234", "api_secret": "as-5678", "from_number": "+15550001111"}
    async with serve_bundle(
        out,
        plugin_id="local.http.acmefax",
        config=config,
        host_functions={HTTP_REQUEST_METHOD: http},
    ) as (host, _):
        sent = await host.request(
            "outbound_fax.send_fax", SendFax(to=TO, document=b"%PDF"), result_type=FaxJob
        )
        followed = await host.request(
            "outbound_fax.get_status", FaxQuery(job_id="77"), result_type=FaxJob
        )
    send, status = http.requests
    assert send.url == "https://api.acmefax.example/v1/faxes"
    assert header(send, "Authorization") == basic_auth("ak-1234", "as-5678")
    content_type = header(send, "Content-Type")
    assert content_type is not None
    parts = parse_multipart(content_type, send.body)
    assert [(p.name, p.filename, p.data) for p in parts] == [
        ("to", None, TO.encode()),
        ("from", None, b"+15550001111"),
        ("file", "document.pdf", b"%PDF"),
    ]
    assert status.url == "https://api.acmefax.example/v1/faxes/77"
    assert (sent.status, followed.status) == ("queued", "success")


def test_an_api_key_in_the_query_is_encoded_and_required(tmp_path: Path) -> None:
    entry = faxbot_entry(auth={"scheme": "api_key_query", "param": "key"})
    out = write_bundle(entry, tmp_path / "acme")
    provider = json.loads((out / "provider.json").read_text())
    assert provider["actions"]["get_status"]["url"] == (
        "https://api.acmefax.example/v1/faxes/{{request.job_id}}?key={{config.api_key}}"
    )
    assert "auth" not in provider
    (field,) = [f for f in load_manifest(out).config if f.name == "api_key"]
    assert field.required and field.secret


def test_an_entry_already_in_corrals_dialect_is_kept(tmp_path: Path) -> None:
    entry = faxbot_entry(auth={"bearer": "{{creds.token}}"})
    out = write_bundle(entry, tmp_path / "acme", plugin_id="com.acme.fax")
    provider = json.loads((out / "provider.json").read_text())
    assert provider["auth"] == {"bearer": "{{config.token}}"}
    manifest = load_manifest(out)
    assert manifest.id == "com.acme.fax" and manifest.entrypoint == "http_fax"
    assert "token" in manifest.secret_fields


def test_a_reverse_dns_entry_id_is_used_as_is(tmp_path: Path) -> None:
    entry = faxbot_entry()
    entry["id"] = "com.acme.fax"
    assert load_manifest(write_bundle(entry, tmp_path / "a")).id == "com.acme.fax"


def test_an_action_outside_allowed_domains_writes_nothing(tmp_path: Path) -> None:
    entry = faxbot_entry()
    entry["manifest"]["actions"]["get_status"]["url"] = "https://collector.evil.example/x"
    with pytest.raises(HttpManifestBundleError) as info:
        write_bundle(entry, tmp_path / "acme")
    assert info.value.problems == [
        "$.actions.get_status.url: host 'collector.evil.example' is not in $.allowed_domains"
    ]
    assert not (tmp_path / "acme").exists()


def test_an_unknown_template_variable_is_refused(tmp_path: Path) -> None:
    entry = faxbot_entry()
    entry["manifest"]["actions"]["send_fax"]["body"]["template"]["x"] = "{{recipient_name}}"
    with pytest.raises(HttpManifestBundleError) as info:
        write_bundle(entry, tmp_path / "acme")
    assert info.value.problems[0].startswith(
        "$.actions.send_fax.body.template.x: 'recipient_name' is not a path"
    )


def test_an_entry_without_actions_is_no_http_provider(tmp_path: Path) -> None:
    entry = faxbot_entry()
    entry["manifest"] = {"id": "acmefax", "version": "1.2.0"}
    with pytest.raises(HttpManifestBundleError) as info:
        write_bundle(entry, tmp_path / "acme")
    assert info.value.problems == ["$.manifest: has no `actions`: not an HTTP provider"]


def test_an_invalid_plugin_toml_is_reported(tmp_path: Path) -> None:
    entry = faxbot_entry()
    entry["version"] = "1.2"
    with pytest.raises(HttpManifestBundleError) as info:
        write_bundle(entry, tmp_path / "acme")
    assert info.value.problems == ["$.version: '1.2' is not a semantic version"]


def test_a_non_empty_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_bundle(faxbot_entry(), tmp_path / "acme")
    assert [p.name for p in (tmp_path / "acme").iterdir()] == ["keep.txt"]
