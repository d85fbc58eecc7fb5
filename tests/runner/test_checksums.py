from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from protocol import load_manifest
from runner.allowlist import load_allowlist
from runner.checksums import (
    ChecksumsError,
    bundle_checksum,
    checksum_line,
    checksum_name,
    load_checksums,
    parse_checksums,
)
from runner.cli import main
from runner.digest import tree_digest
from runner.install_cli import DEFAULT_ALLOWLIST, DEFAULT_CHECKSUMS, ROOT

A = "a" * 64
B = "b" * 64
SHIPPED = ("plugins/twilio_sms", "plugins/phaxio_fax", "plugins/http_fax_example")


def test_parse_reads_names_and_digests_and_skips_comments(tmp_path: Path) -> None:
    text = f"# approved\n\n{A}  plugins/x\r\n{B.upper()} *bundles/y.zip\n"
    checksums = parse_checksums(text, base_dir=tmp_path)
    assert [(e.name, e.sha256, e.line) for e in checksums.entries] == [
        ("plugins/x", A, 3),
        ("bundles/y.zip", B, 4),
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"{A}  ok\nnot a checksum line\n", 2),
        (f"{A[:-1]}  short\n", 1),
        (f"{A} one-space\n", 1),
        (f"{A}  \n", 1),
        (f"{A}   leading-space\n", 1),
        (f"\\{A}  escaped\n", 1),
        (f"{A}  x\n{B}  ./x\n", 2),
    ],
)
def test_parse_names_the_bad_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(ChecksumsError) as info:
        parse_checksums(text, base_dir=tmp_path, source="checksums.txt")
    assert info.value.line == line
    assert f"checksums.txt:{line}:" in str(info.value)


def test_lookup_resolves_relative_names_and_matches_urls_exactly(tmp_path: Path) -> None:
    url = "https://example.org/b.zip"
    checksums = parse_checksums(f"{A}  plugins/x\n{B}  {url}\n", base_dir=tmp_path)
    entry = checksums.lookup(tmp_path / "plugins" / "." / "x")
    assert entry is not None and entry.sha256 == A
    assert checksums.lookup(tmp_path / "plugins" / "y") is None
    found = checksums.lookup(url)
    assert found is not None and found.sha256 == B
    assert checksums.lookup(url + "?x=1") is None


def test_an_absolute_name_outside_the_base_dir_is_found(tmp_path: Path) -> None:
    bundle = tmp_path / "elsewhere" / "b.zip"
    checksums = parse_checksums(f"{A}  {bundle}\n", base_dir=tmp_path / "etc")
    assert checksums.lookup(bundle) is not None
    assert checksum_name(bundle, tmp_path / "etc") == bundle.as_posix()


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ChecksumsError):
        load_checksums(tmp_path / "missing.txt")


def test_the_root_checksums_cover_the_shipped_plugins() -> None:
    """Fails when a shipped plugin changes without checksums.txt (or allowlist.toml) following."""
    checksums = load_checksums(DEFAULT_CHECKSUMS)
    for name in SHIPPED:
        entry = checksums.lookup(ROOT / name)
        assert entry is not None, f"checksums.txt has no line for {name}"
        actual = tree_digest(ROOT / name)
        assert entry.sha256 == actual, (
            f"{name} changed since checksums.txt was written. Review the change, then run "
            f"`corral plugins checksum {name}` and replace line {entry.line} with its output."
        )


def test_the_root_allowlist_admits_the_shipped_plugins() -> None:
    allowlist = load_allowlist(DEFAULT_ALLOWLIST)
    for name in SHIPPED:
        manifest = load_manifest(ROOT / name)
        rule = allowlist.rule(manifest.id)
        assert rule is not None, f"allowlist.toml does not list {manifest.id} ({name})"
        assert rule.allows_version(manifest.version), (
            f"{manifest.id} is now {manifest.version}: widen its range in allowlist.toml"
        )
        if rule.digests:
            assert tree_digest(ROOT / name) in rule.digests, f"update the pin of {manifest.id}"


def test_checksum_command_prints_lines_that_parse_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "plugin.toml").write_text("x = 1\n")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("plugin.toml", "x = 1\n")
    listing = tmp_path / "checksums.txt"
    status = main(
        ["plugins", "checksum", "--checksums", str(listing), str(tmp_path / "b"), str(archive)]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        checksum_line(tree_digest(tmp_path / "b"), "b"),
        checksum_line(bundle_checksum(archive), "a.zip"),
    ]
    parsed = parse_checksums(out, base_dir=tmp_path)
    assert parsed.lookup(archive) is not None and parsed.lookup(tmp_path / "b") is not None


def test_checksum_command_json_gives_an_archives_tree_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "plugin.toml").write_text("x = 1\n")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_path / "tree" / "plugin.toml", "plugin.toml")
    assert main(["plugins", "checksum", "--json", str(archive)]) == 0
    (row,) = json.loads(capsys.readouterr().out)["checksums"]
    assert row["kind"] == "zip"
    assert row["sha256"] == bundle_checksum(archive)
    assert row["tree_digest"] == tree_digest(tmp_path / "tree")


def test_checksum_command_fails_on_a_directory_with_a_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "link").symlink_to("/etc/passwd")
    assert main(["plugins", "checksum", str(tmp_path / "b")]) == 1
    assert "symlink" in capsys.readouterr().err
