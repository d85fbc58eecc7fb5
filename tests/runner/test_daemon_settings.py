"""Daemon settings: TOML file, environment and flags merged, validated, documented, consumed."""

from __future__ import annotations

import dataclasses
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from runner.daemon import service_settings
from runner.daemon_settings import (
    CONFIG_FILE_VARIABLE,
    VARIABLES,
    DaemonSettings,
    DaemonSettingsError,
    load_daemon_settings,
    markdown_table,
    to_environ,
    unknown_variables,
)
from runner.service import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
_TOKEN = re.compile(r"\bCORRAL_[A-Z0-9_]*[A-Z0-9]\b")
_EGRESS_NAME = re.compile(r'env\.(?:parse|text)\("([A-Z0-9_]+)"')


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def problems_of(environ: dict[str, str], config: Path | None = None) -> list[str]:
    with pytest.raises(DaemonSettingsError) as info:
        load_daemon_settings(environ, config)
    return info.value.problems


def test_the_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'profile = "hipaa"\nlisten_port = 9000\nwebhook_rate_per_minute = 600\n'
        "[egress]\nmax_redirects = 3\ndeny_hosts = ['a.example', 'b.example']\n",
    )
    environ = {"CORRAL_LISTEN_PORT": "9100", CONFIG_FILE_VARIABLE: str(config)}
    settings = load_daemon_settings(environ, overrides={"listen_host": "0.0.0.0"})
    assert settings.profile == "hipaa"
    assert settings.listen_port == 9100
    assert settings.listen_host == "0.0.0.0"
    assert settings.egress_max_redirects == 3
    assert settings.egress_deny_hosts == ("a.example", "b.example")
    flagged = load_daemon_settings(environ, overrides={"listen_port": 9200})
    assert flagged.listen_port == 9200


def test_unknown_keys_and_wrong_types_in_the_file_are_named(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'listen_port = "8080"\nprofil = "hipaa"\nCORRAL_PROFILE = "x"\naudit_fsync = 1\n'
        "[egress]\nmax_redirects = 3\nbogus = 1\n",
    )
    problems = problems_of({}, config)
    joined = "\n".join(problems)
    for key in ("listen_port", "profil", "CORRAL_PROFILE", "audit_fsync", "egress_bogus"):
        assert f"{config}: {key}:" in joined, joined
    assert "without CORRAL_" in joined  # the hint for a variable name used as a key
    assert not any("max_redirects" in p for p in problems)


def test_a_key_set_twice_and_invalid_toml_are_refused(tmp_path: Path) -> None:
    twice = write(tmp_path, "egress_max_redirects = 1\n[egress]\nmax_redirects = 2\n")
    assert "set twice" in problems_of({}, twice)[0]
    broken = write(tmp_path, "listen_port = \n")
    assert "not valid TOML" in problems_of({}, broken)[0]
    assert "cannot read" in problems_of({}, tmp_path / "missing.toml")[0]


def test_bad_environment_values_name_the_variable_and_never_echo_the_value() -> None:
    problems = problems_of(
        {
            "CORRAL_LISTEN_PORT": "hunter2",
            "CORRAL_PROFILE": "hipa",
            "CORRAL_AUDIT_KEEP": "0",
            "CORRAL_EGRESS_ALLOW_HOSTS": ",",
        }
    )
    joined = "\n".join(problems)
    for name in (
        "CORRAL_LISTEN_PORT",
        "CORRAL_PROFILE",
        "CORRAL_AUDIT_KEEP",
        "CORRAL_EGRESS_ALLOW_HOSTS",
    ):
        assert f"{name}:" in joined, joined
    assert "hunter2" not in joined


def test_tls_needs_both_files_wherever_each_comes_from(tmp_path: Path) -> None:
    assert "go together" in problems_of({"CORRAL_TLS_CERT": "/etc/cert.pem"})[0]
    config = write(tmp_path, 'tls_cert = "/etc/cert.pem"\n')
    settings = load_daemon_settings({"CORRAL_TLS_KEY": "/etc/key.pem"}, config)
    assert settings.is_tls


def test_file_values_reach_each_subsystem_through_the_environ_mapping(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'profile = "HIPAA"\nwebhook_rate_per_minute = 42\naudit_fsync = false\n'
        "audit_keep = 9\nrate_writes_per_minute = 7.5\nuvloop = false\n"
        "feature_v3_plugins = false\ntrusted_proxies = ['10.0.0.0/8', '::1']\n"
        "[egress]\nallow_hosts = ['api.example']\ntimeout_s = 5\n",
    )
    settings = load_daemon_settings({"PATH": "/bin"}, config)
    environ = to_environ(settings, {"PATH": "/bin", "CORRAL_AUDIT_KEEP": "1"})
    assert environ["PATH"] == "/bin"
    assert environ["CORRAL_UVLOOP"] == "0"  # the launcher compares with "0"
    service = ServiceSettings.from_env(tmp_path, environ)
    assert service.host.is_hipaa and service.config.is_hipaa
    assert service.webhooks.rate_per_minute == 42
    assert (service.audit.fsync, service.audit.keep) == (False, 9)
    assert service.rate_limits.writes_per_minute == 7.5
    assert service.config.features.v3_plugins is False
    assert len(service.webhooks.urls.trusted_proxies) == 2
    assert service.host.egress.timeout_s == 5
    assert [p.host for p in service.host.egress.allow_hosts or ()] == ["api.example"]


def test_the_trust_file_paths_replace_the_shipped_ones(tmp_path: Path) -> None:
    settings = load_daemon_settings(
        {"CORRAL_ALLOWLIST_PATH": "/etc/corral/allowlist.toml"}, overrides={"state_dir": tmp_path}
    )
    service = service_settings(settings, to_environ(settings, {}))
    assert service.host.allowlist_path == Path("/etc/corral/allowlist.toml")
    assert service.host.checksums_path == REPO / "checksums.txt"
    assert service.host.state_dir == tmp_path


def test_the_documented_defaults_are_the_subsystems_defaults(tmp_path: Path) -> None:
    every = to_environ(DaemonSettings(), {}, defaults=True)
    defaults = DaemonSettings()
    assert set(every) == {v for v, n in VARIABLES.items() if getattr(defaults, n) is not None}
    explicit = ServiceSettings.from_env(tmp_path, every)
    implicit = ServiceSettings.from_env(tmp_path, {})
    for part in ("host", "config", "audit", "registry_path", "rate_limits", "webhooks"):
        assert getattr(explicit, part) == getattr(implicit, part), part
    assert dataclasses.replace(explicit, environ={}) == dataclasses.replace(implicit, environ={})


def test_unknown_corral_variables_are_reported() -> None:
    environ = {"CORRAL_PROFLE": "hipaa", "CORRAL_PROFILE": "hipaa", CONFIG_FILE_VARIABLE: "x"}
    assert unknown_variables(environ) == ["CORRAL_PROFLE"]


def test_docs_configuration_holds_the_generated_settings_table() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    assert markdown_table() in docs, "regenerate: python -m runner.daemon_settings"
    assert f"`{CONFIG_FILE_VARIABLE}`" in docs


def test_every_corral_variable_the_code_reads_is_a_documented_setting() -> None:
    read: set[str] = set()
    for package in ("runner", "sandbox"):
        for source in (REPO / package).rglob("*.py"):
            text = source.read_text()
            read |= set(_TOKEN.findall(text))
            if source.name == "egress_settings.py":
                read |= {f"CORRAL_EGRESS_{name}" for name in _EGRESS_NAME.findall(text)}
    assert {f"CORRAL_EGRESS_{n}" for n in ("TIMEOUT_S", "DENY_HOSTS")} <= read
    known = set(VARIABLES) | {CONFIG_FILE_VARIABLE}
    assert sorted(read - known) == [], "add them to runner/daemon_settings.py and regenerate"
    docs = (REPO / "docs" / "configuration.md").read_text()
    assert [name for name in sorted(read) if f"`{name}`" not in docs] == []


def test_the_daemon_raises_its_open_file_limit_to_the_hard_limit() -> None:
    # Each live worker costs the host 4 descriptors: a soft limit of 256 would stop at ~60.
    script = (
        "import resource; "
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
        "from runner.daemon import raise_fd_limit; "
        "print(raise_fd_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    returned, soft, hard = (int(value) for value in out)
    assert returned == soft > 256
    assert soft == hard or hard == resource.RLIM_INFINITY
