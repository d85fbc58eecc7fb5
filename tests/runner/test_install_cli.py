from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.cli import main
from runner.digest import tree_digest
from tests.fixtures.install.builders import PLUGIN_ID, bundle_files, write_dir


@pytest.fixture
def policy(tmp_path: Path) -> tuple[Path, list[str]]:
    """A bundle, an allowlist and checksums that approve it; returns the bundle and options."""
    bundle = write_dir(tmp_path / "bundles" / "demo", bundle_files())
    (tmp_path / "allowlist.toml").write_text(f'[[plugin]]\nid = "{PLUGIN_ID}"\n')
    (tmp_path / "checksums.txt").write_text(f"{tree_digest(bundle)}  bundles/demo\n")
    options = [
        "--store",
        str(tmp_path / "store"),
        "--allowlist",
        str(tmp_path / "allowlist.toml"),
        "--checksums",
        str(tmp_path / "checksums.txt"),
    ]
    return bundle, options


@pytest.mark.parametrize("command", ["install", "checksum", "verify"])
def test_each_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plugins", command, "--help"])
    assert info.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_install_then_verify(
    policy: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, options = policy
    assert main(["plugins", "install", str(bundle), "--json", *options]) == 0
    installed = json.loads(capsys.readouterr().out)["installed"]
    assert installed["id"] == PLUGIN_ID and installed["digest"] == tree_digest(bundle)
    assert Path(installed["path"]).is_dir()

    verify = ["plugins", "verify", "--json", *options[:4]]
    assert main(verify) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and [p["status"] for p in report["plugins"]] == ["ok"]

    entry = Path(installed["path"])
    os.chmod(entry, 0o755)
    (entry / "planted.py").write_text("")
    assert main(verify) == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["status"] for p in report["plugins"]] == ["modified"]


def test_a_refused_install_exits_1_with_its_reason(
    policy: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, options = policy
    (bundle / "demo.py").write_text("changed\n")
    assert main(["plugins", "install", str(bundle), "--json", *options]) == 1
    refused = json.loads(capsys.readouterr().out)["refused"]
    assert refused["reason"] == "checksum_mismatch"
    assert main(["plugins", "install", str(bundle), *options]) == 1
    assert "refused (checksum_mismatch)" in capsys.readouterr().err


def test_a_refused_remote_install_says_why(
    policy: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, options = policy
    monkeypatch.delenv("CORRAL_PLUGIN_INSTALL", raising=False)
    monkeypatch.delenv("FEATURE_PLUGIN_INSTALL", raising=False)
    monkeypatch.delenv("CORRAL_PROFILE", raising=False)
    url = "https://plugins.example.com/demo.zip"
    assert main(["plugins", "install", url, *options]) == 1
    assert "CORRAL_PLUGIN_INSTALL=true" in capsys.readouterr().err
    monkeypatch.setenv("CORRAL_PLUGIN_INSTALL", "true")
    monkeypatch.setenv("CORRAL_PROFILE", "hipaa")
    assert main(["plugins", "install", url, "--json", *options]) == 1
    assert json.loads(capsys.readouterr().out)["refused"]["reason"] == "remote_install_forbidden"


def test_an_invalid_policy_file_exits_2(
    policy: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, options = policy
    (tmp_path / "allowlist.toml").write_text("[[plugin]]\nname = 'x'\n")
    assert main(["plugins", "install", str(bundle), *options]) == 2
    assert "$.plugin[0]" in capsys.readouterr().err
    (tmp_path / "allowlist.toml").write_text(f'[[plugin]]\nid = "{PLUGIN_ID}"\n')
    (tmp_path / "checksums.txt").write_text("nonsense\n")
    assert main(["plugins", "install", str(bundle), "--json", *options]) == 2
    assert ":1:" in json.loads(capsys.readouterr().out)["message"]


def test_verify_with_nothing_installed_succeeds(
    policy: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, options = policy
    assert main(["plugins", "verify", *options[:4]]) == 0
    assert "no plugins installed" in capsys.readouterr().out
