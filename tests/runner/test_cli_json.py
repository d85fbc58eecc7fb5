"""Every `corral` command: `--help` with exit codes, `--json`, and progress only on a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli import main
from runner.digest import tree_digest
from tests.fixtures.install.builders import bundle_files, write_dir
from tests.runner.cli_harness import corral_env, run_corral, run_on_terminal, set_corral_env

COMMANDS = [
    ["plugins", "list"],
    ["plugins", "install"],
    ["plugins", "checksum"],
    ["plugins", "verify"],
    ["plugins", "from-manifest"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "revoke"],
    ["tenants", "list"],
    ["tenants", "show"],
    ["tenants", "activate"],
    ["tenants", "deactivate"],
    ["sandbox", "doctor"],
    ["audit", "verify"],
    ["config", "rotate-key"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_documents_json_and_its_exit_codes(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--json" in text
    assert "exit status: 0 success;" in text and "2 usage error" in text


def test_serve_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0 and "--state-dir" in capsys.readouterr().out


def _policy(tmp_path: Path, count: int) -> tuple[list[Path], list[str]]:
    """`count` approved bundles, and the options that name their store and policy files."""
    bundles, allow, sums = [], [], []
    for i in range(count):
        plugin_id = f"dev.corral.test.demo{i}"
        bundle = write_dir(tmp_path / "bundles" / f"demo{i}", bundle_files(plugin_id))
        bundles.append(bundle)
        allow.append(f'[[plugin]]\nid = "{plugin_id}"\n')
        sums.append(f"{tree_digest(bundle)}  bundles/demo{i}\n")
    (tmp_path / "allowlist.toml").write_text("".join(allow))
    (tmp_path / "checksums.txt").write_text("".join(sums))
    options = ["--store", str(tmp_path / "store"), "--allowlist", str(tmp_path / "allowlist.toml")]
    return bundles, options


def test_installing_several_bundles_reports_each_and_exits_1_if_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundles, options = _policy(tmp_path, 2)
    options += ["--checksums", str(tmp_path / "checksums.txt")]
    missing = str(tmp_path / "bundles" / "missing")
    sources = [str(bundles[0]), missing, str(bundles[1])]
    assert main(["plugins", "install", *sources, "--json", *options]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False and [r["source"] for r in report["results"]] == sources
    assert [("installed" in r, "refused" in r) for r in report["results"]] == [
        (True, False),
        (False, True),
        (True, False),
    ]
    assert "[1/3]" not in captured.err  # not a terminal: no progress
    assert main(["plugins", "install", str(bundles[0]), "--json", *options]) == 0
    assert json.loads(capsys.readouterr().out)["installed"]["id"] == "dev.corral.test.demo0"


def test_install_and_verify_show_progress_on_a_terminal_only(tmp_path: Path) -> None:
    bundles, options = _policy(tmp_path, 3)
    install = ["plugins", "install", *map(str, bundles), *options]
    install += ["--checksums", str(tmp_path / "checksums.txt")]
    env = corral_env(tmp_path)

    installed = run_on_terminal(install, env)
    assert installed.status == 0, installed.err
    for i in range(3):
        assert f"[{i + 1}/3] dev.corral.test.demo{i} ... ok" in installed.err
    assert installed.out.count("installed dev.corral.test.demo") == 3

    verified = run_on_terminal(["plugins", "verify", *options, "--json"], env)
    assert verified.status == 0 and "[1/3]" not in verified.err  # --json: no progress
    assert [p["status"] for p in verified.json()["plugins"]] == ["ok"] * 3
    verified = run_on_terminal(["plugins", "verify", *options], env)
    assert "[3/3] dev.corral.test.demo2 1.0.0 ... ok" in verified.err
    piped = run_corral(["plugins", "verify", *options], env)
    assert piped.status == 0 and "[1/3]" not in piped.err  # stderr is a pipe: no progress


def test_unusable_input_exits_2_with_a_json_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_corral_env(monkeypatch, tmp_path)
    checks = [
        ["plugins", "list", "--plugins-dir", str(tmp_path / "nowhere")],
        ["audit", "verify"],  # no audit log yet
        ["keys", "list"],  # no config document yet
        ["tenants", "list", "--config", str(tmp_path / "missing.toml")],  # no settings file
    ]
    for command in checks:
        assert main([*command, "--json"]) == 2, command
        assert set(json.loads(capsys.readouterr().out)) == {"error", "message"}


def test_settings_file_names_the_documents_the_daemon_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_corral_env(monkeypatch, tmp_path / "elsewhere")
    monkeypatch.delenv("CORRAL_CONFIG_PATH")
    monkeypatch.delenv("CORRAL_STATE_DIR")  # else they would override the file
    settings = tmp_path / "corral.toml"
    settings.write_text(
        f'state_dir = "{tmp_path / "state"}"\nconfig_path = "{tmp_path / "doc.json"}"\n'
    )
    create = ["keys", "create", "--name", "n", "--scope", "keys:manage", "--config", str(settings)]
    assert main(create) == 0
    assert (tmp_path / "doc.json").is_file() and (tmp_path / "state" / "audit").is_dir()
    capsys.readouterr()
    assert main(["audit", "verify", "--config", str(settings), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lines"] == 1


def test_rotate_key_without_a_key_file_is_refused_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_corral_env(monkeypatch, tmp_path)
    assert main(["config", "rotate-key", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "rotation_failed"
