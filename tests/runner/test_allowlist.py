from __future__ import annotations

import base64
from pathlib import Path

import pydantic
import pytest

from runner.allowlist import Allowlist, AllowlistError, load_allowlist, parse_allowlist
from runner.install_versions import Version, VersionRange
from tests.fixtures.install.builders import key_toml, new_key

PIN = "c" * 64


def test_a_full_allowlist_parses_into_a_frozen_typed_object() -> None:
    _, public = new_key()
    allowlist = parse_allowlist(
        "require_signature = false\n"
        + key_toml("release", public)
        + f'[[plugin]]\nid = "dev.x.fax"\nversions = ">=1.0.0,<2.0.0"\ndigests = ["{PIN}"]\n'
        'require_signature = true\nkeys = ["release"]\n'
        '[[plugin]]\nid = "dev.x.sms"\n'
    )
    assert isinstance(allowlist, Allowlist)
    fax = allowlist.rule("dev.x.fax")
    sms = allowlist.rule("dev.x.sms")
    assert fax is not None and sms is not None
    assert fax.digests == (PIN,)
    assert allowlist.signature_required(fax) and not allowlist.signature_required(sms)
    assert [k.name for k in allowlist.keys_for(fax)] == ["release"]
    assert allowlist.keys_for(fax)[0].public_key == base64.b64decode(public)
    assert sms.allows_version("7.0.0")
    assert allowlist.rule("dev.x.other") is None
    with pytest.raises(pydantic.ValidationError):
        fax.id = "dev.x.other"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("surprise = 1\n", "$.surprise"),
        ('[[plugin]]\nid = "a.b"\nversion = "1.0.0"\n', "$.plugin[0].version"),
        ('[[plugin]]\nid = "a.b"\nversions = ">=1"\n', "$.plugin[0].versions"),
        ('[[plugin]]\nid = "a.b"\nversions = "~1.0.0"\n', "$.plugin[0].versions"),
        ('[[plugin]]\nid = "a.b"\ndigests = ["ABC"]\n', "$.plugin[0].digests"),
        ('[[key]]\nname = "k"\npublic_key = "not base64!"\n', "$.key[0].public_key"),
        ('[[key]]\nname = "k"\npublic_key = "AAAA"\n', "$.key[0].public_key"),
        ('[[key]]\nname = "k"\npublic_key = "AAAA"\nextra = 1\n', "$.key[0].extra"),
        ('[[plugin]]\nid = "a.b"\nrequire_signature = true\n', "$"),
        ('[[plugin]]\nid = "a.b"\nkeys = ["nobody"]\n', "$"),
        ('[[plugin]]\nid = "a.b"\n[[plugin]]\nid = "a.b"\n', "$"),
        ("[[plugin\n", "$"),
    ],
)
def test_invalid_allowlists_are_refused_with_the_path(text: str, path: str) -> None:
    with pytest.raises(AllowlistError) as info:
        parse_allowlist(text)
    assert any(p.startswith(f"{path}:") for p in info.value.problems), info.value.problems


def test_a_signature_requirement_needs_a_trusted_key() -> None:
    _, public = new_key()
    text = "require_signature = true\n" + key_toml("k", public) + '[[plugin]]\nid = "a.b"\n'
    allowlist = parse_allowlist(text)
    rule = allowlist.rule("a.b")
    assert rule is not None and allowlist.signature_required(rule)


def test_load_reads_a_file_and_reports_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "allowlist.toml"
    path.write_text('[[plugin]]\nid = "a.b"\n')
    assert load_allowlist(path).rule("a.b") is not None
    with pytest.raises(AllowlistError):
        load_allowlist(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("spec", "version", "allowed"),
    [
        (">=1.0.0,<2.0.0", "1.0.0", True),
        (">=1.0.0,<2.0.0", "1.9.99", True),
        (">=1.0.0,<2.0.0", "2.0.0", False),
        (">=1.0.0,<2.0.0", "0.9.0", False),
        (">=1.0.0,<2.0.0", "1.0.0-rc.1", False),
        (">=1.0.0,<2.0.0", "2.0.0-rc.1", True),  # semver precedence: 2.0.0-rc.1 < 2.0.0
        (">=1.0.0,<2.0.0-0", "2.0.0-rc.1", False),
        ("==1.2.3", "1.2.3+build.5", True),
        ("!=1.2.3", "1.2.3", False),
        (">1.2.3", "1.10.0", True),
        ("<=1.2.3", "1.2.3", True),
        (">=1.0.0", "not-a-version", False),
    ],
)
def test_version_ranges(spec: str, version: str, allowed: bool) -> None:
    assert VersionRange.parse(spec).contains(version) is allowed


def test_versions_sort_by_semver_precedence() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.10.0",
    ]
    assert sorted(reversed(ordered), key=Version.parse) == ordered
