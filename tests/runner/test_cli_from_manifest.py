"""`corral plugins from-manifest`: a Faxbot HTTP-manifest entry becomes a bundle that installs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main

ENTRY: dict[str, Any] = {
    "id": "acmefax",
    "name": "Acme Fax",
    "type": "outbound",
    "version": "1.2.0",
    "description": "Acme's cloud fax API.",
    "homepage": "https://acmefax.example/docs",
    "manifest": {
        "id": "acmefax",
        "name": "Acme Fax",
        "auth": {"scheme": "basic"},
        "allowed_domains": ["api.acmefax.example"],
        "actions": {
            "send_fax": {
                "method": "POST",
                "url": "https://api.acmefax.example/v1/faxes",
                "body": {
                    "kind": "multipart",
                    "template": {"to": "{{to}}", "from": "{{settings.from_number}}"},
                },
                "response": {"job_id": "data.id", "status": "data.status"},
            },
            "get_status": {
                "method": "GET",
                "url": "https://api.acmefax.example/v1/faxes/{{job_id}}",
                "response": {"job_id": "data.id", "status": "data.status"},
            },
        },
    },
}


def _from_manifest(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    status = main(["plugins", "from-manifest", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_an_entry_file_becomes_a_bundle_that_installs_once_approved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = tmp_path / "acme.json"
    entry.write_text(json.dumps(ENTRY))
    checksums = tmp_path / "checksums.txt"
    out = tmp_path / "bundles" / "acme"
    status, report = _from_manifest(
        capsys, str(entry), "--out", str(out), "--checksums", str(checksums)
    )
    assert status == 0
    written = report["written"]
    assert (written["id"], written["version"]) == ("local.http.acmefax", "1.2.0")
    assert written["checksums_line"] == f"{written['tree_digest']}  bundles/acme"
    assert sorted(p.name for p in out.iterdir()) == [
        "http_acmefax.py",
        "plugin.toml",
        "provider.json",
    ]

    # The printed line and an allowlist entry are all it takes to install it.
    checksums.write_text(written["checksums_line"] + "\n")
    (tmp_path / "allowlist.toml").write_text(f'[[plugin]]\nid = "{written["id"]}"\n')
    install = ["plugins", "install", str(out), "--json", "--store", str(tmp_path / "store")]
    install += ["--allowlist", str(tmp_path / "allowlist.toml"), "--checksums", str(checksums)]
    assert main(install) == 0
    assert json.loads(capsys.readouterr().out)["installed"]["digest"] == written["tree_digest"]

    status, report = _from_manifest(capsys, str(entry), "--out", str(out))
    assert status == 1 and report["error"] == "not_written"  # --out is not empty


def test_a_registry_id_is_looked_up_in_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"providers": [ENTRY]}))
    out = tmp_path / "acme"
    status, report = _from_manifest(
        capsys, "acmefax", "--registry", str(registry), "--out", str(out), "--id", "com.acme.fax"
    )
    assert status == 0 and report["written"]["id"] == "com.acme.fax"
    status, report = _from_manifest(capsys, str(registry), "--out", str(tmp_path / "x"))
    assert status == 2 and "--registry" in report["message"]  # a whole registry is no entry


def test_unusable_sources_exit_2_and_unconvertible_entries_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    status, report = _from_manifest(capsys, "no.such.provider", "--out", out)
    assert status == 2 and report["error"] == "unusable"
    (tmp_path / "broken.json").write_text("{")
    status, report = _from_manifest(capsys, str(tmp_path / "broken.json"), "--out", out)
    assert status == 2

    # The shipped registry's entries are corral bundles already, not HTTP manifests.
    status, report = _from_manifest(capsys, "dev.corral.twilio-sms", "--out", out)
    assert status == 1 and report["error"] == "invalid_entry"
    assert report["problems"] == ["$.manifest: has no `actions`: not an HTTP provider"]
    bad = json.loads(json.dumps(ENTRY))
    bad["manifest"]["actions"]["send_fax"]["url"] = "https://evil.example/v1/faxes"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    status, report = _from_manifest(capsys, str(tmp_path / "bad.json"), "--out", out)
    assert status == 1 and report["problems"]
    assert not Path(out).exists()  # nothing is written unless the bundle is valid
