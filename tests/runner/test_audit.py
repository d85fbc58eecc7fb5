"""The audit trail: appends, the hash chain, tamper detection, torn lines, rotation, the command."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest

from runner.audit import (
    GENESIS,
    AuditCorruptError,
    AuditFieldError,
    AuditLog,
    AuditSettings,
    anchor_path,
    canonical,
    line_hash,
    rotated_path,
)
from runner.audit_verify import verify
from runner.cli import main

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def new_log(tmp_path: Path, **changes: object) -> AuditLog:
    return await AuditLog.open(AuditSettings(tmp_path / "audit" / "audit.log", **changes))  # type: ignore[arg-type]


async def fill(log: AuditLog, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        await log.record(
            "plugin.config.update",
            key_id="k1",
            tenant="t1",
            target=f"dev.corral.p{i}",
            request_id=f"req-{i}",
            details={"n": i},
        )


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def kinds(path: Path) -> list[tuple[str, int, str]]:
    return [(p.file, p.line, p.kind) for p in verify(path).problems]


async def test_a_record_holds_exactly_the_audit_fields(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    record = await log.record(
        "plugin.activate",
        outcome="denied",
        key_id="k1",
        tenant="t1",
        target="dev.corral.twilio-sms",
        request_id="r-1",
        details={"status": 403, "reason": "scope"},
    )
    line = json.loads(log.settings.path.read_text())
    assert line == record
    assert set(line) == {
        "v",
        "seq",
        "time",
        "key_id",
        "tenant",
        "action",
        "target",
        "outcome",
        "request_id",
        "details",
        "prev",
        "hash",
    }
    assert RFC3339_UTC.match(line["time"])
    assert line["seq"] == 1 and line["prev"] == GENESIS and line["hash"] == line_hash(line)
    assert log.settings.path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"details": {"body": {"nested": "payload"}}}, "short scalar"),
        ({"details": {"text": "x" * 300}}, "short scalar"),
        ({"details": {"Bad-Key": 1}}, "details key"),
        ({"details": {f"k{i}": i for i in range(17)}}, "at most 16"),
        ({"outcome": "maybe"}, "outcome"),
        ({"target": "t" * 300}, "at most 256"),
        ({"details": {"ratio": float("nan")}}, "short scalar"),
    ],
)
async def test_record_refuses_fields_that_could_carry_payloads(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    log = await new_log(tmp_path)
    with pytest.raises(AuditFieldError, match=message):
        await log.record("x.y", **changes)  # type: ignore[arg-type]
    with pytest.raises(AuditFieldError, match="action"):
        await log.record("Not An Action")
    assert not log.settings.path.exists()


async def test_an_intact_chain_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = await new_log(tmp_path)
    await fill(log, 10)
    report = verify(log.settings.path)
    assert report.is_intact and report.lines == 10 and report.head_seq == 10
    assert report.head_hash == json.loads(lines_of(log.settings.path)[-1])["hash"]
    assert main(["audit", "verify", str(log.settings.path)]) == 0
    assert "audit trail intact: 10 lines" in capsys.readouterr().out
    assert main(["audit", "verify", str(log.settings.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["intact"] is True


async def test_concurrent_appends_are_serialized(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    other = await new_log(tmp_path)  # a second writer on the same file (another process)
    await asyncio.gather(*(fill(w, 25, i * 100) for i, w in enumerate([log, other, log, other])))
    report = verify(log.settings.path)
    assert report.is_intact and report.lines == 100 and report.head_seq == 100


async def test_an_edited_line_is_detected_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = await new_log(tmp_path)
    await fill(log, 6)
    lines = lines_of(log.settings.path)
    lines[3] = lines[3].replace('"outcome":"success"', '"outcome":"failure"')
    log.settings.path.write_text("".join(lines))
    assert kinds(log.settings.path) == [("audit.log", 4, "edited")]
    assert main(["audit", "verify", str(log.settings.path)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "audit.log line 4 (seq 4)" in out


async def test_an_edited_and_rehashed_line_breaks_the_next_link(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 6)
    lines = lines_of(log.settings.path)
    record = json.loads(lines[2])
    record["key_id"] = "someone-else"
    record["hash"] = line_hash(record)
    lines[2] = canonical(record) + "\n"
    log.settings.path.write_text("".join(lines))
    assert kinds(log.settings.path) == [("audit.log", 4, "broken_link")]


async def test_a_removed_line_is_detected(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 6)
    lines = lines_of(log.settings.path)
    del lines[2]
    log.settings.path.write_text("".join(lines))
    report = verify(log.settings.path)
    assert [(p.line, p.kind) for p in report.problems] == [(3, "broken_link")]
    assert "expected seq 3: lines before it were removed" in report.problems[0].message


async def test_a_reordered_pair_is_detected(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 6)
    lines = lines_of(log.settings.path)
    lines[2], lines[3] = lines[3], lines[2]
    log.settings.path.write_text("".join(lines))
    report = verify(log.settings.path)
    assert report.problems[0].line == 3 and report.problems[0].kind == "broken_link"
    assert any("reordered" in p.message for p in report.problems)


async def test_an_inserted_line_is_detected(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 4)
    lines = lines_of(log.settings.path)
    forged = json.loads(lines[1])
    forged.update(seq=3, prev=forged["hash"], action="forged.event")
    forged["hash"] = line_hash(forged)
    lines.insert(2, canonical(forged) + "\n")
    log.settings.path.write_text("".join(lines))
    assert kinds(log.settings.path) == [("audit.log", 4, "broken_link")]


async def test_a_removed_first_line_is_detected(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 3)
    log.settings.path.write_text("".join(lines_of(log.settings.path)[1:]))
    assert kinds(log.settings.path) == [("audit.log", 1, "unanchored")]


async def test_a_truncated_last_line_is_reported(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 4)
    data = log.settings.path.read_bytes()
    log.settings.path.write_bytes(data[:-20])
    assert kinds(log.settings.path) == [("audit.log", 4, "torn")]
    assert main(["audit", "verify", str(log.settings.path), "--json"]) == 1


async def test_opening_a_log_with_a_torn_line_sets_it_aside_and_records_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = await new_log(tmp_path)
    await fill(log, 4)
    data = log.settings.path.read_bytes()
    log.settings.path.write_bytes(data[:-20])  # a crash in the middle of the fourth append
    with caplog.at_level(logging.ERROR):
        reopened = await new_log(tmp_path)
    assert any("torn line" in r.getMessage() for r in caplog.records)
    aside = list(log.settings.path.parent.glob("audit.log.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[data.rfind(b"\n", 0, -1) + 1 : -20]
    await fill(reopened, 1)
    report = verify(log.settings.path)
    assert report.is_intact
    actions = [json.loads(line)["action"] for line in lines_of(log.settings.path)]
    assert actions[3] == "audit.torn_line" and len(actions) == 5


async def test_a_second_writer_notices_a_torn_line_left_by_a_crashed_one(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 2)
    with log.settings.path.open("ab") as f:
        f.write(b'{"action":"half')  # another process died mid-append
    await fill(log, 1)
    actions = [json.loads(line)["action"] for line in lines_of(log.settings.path)]
    assert actions[2] == "audit.torn_line" and verify(log.settings.path).is_intact


async def test_an_unreadable_last_line_refuses_to_continue_the_chain(tmp_path: Path) -> None:
    log = await new_log(tmp_path)
    await fill(log, 2)
    with log.settings.path.open("ab") as f:
        f.write(b"not json\n")
    with pytest.raises(AuditCorruptError, match="corral audit verify"):
        await new_log(tmp_path)


# Rotation.


async def rotated_log(tmp_path: Path, keep: int = 3, lines: int = 60) -> AuditLog:
    log = await new_log(tmp_path, max_bytes=4096, keep=keep)
    await fill(log, lines)
    return log


async def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    log = await rotated_log(tmp_path, keep=5, lines=40)
    path = log.settings.path
    assert rotated_path(path, 1).exists() and not anchor_path(path).exists()
    report = verify(path)
    assert report.is_intact, report.problems
    assert report.files[-1] == "audit.log" and len(report.files) >= 2
    assert report.lines == 40 and report.head_seq == 40
    assert all(p.stat().st_size <= 4096 for p in path.parent.glob("audit.log*"))


async def test_dropping_the_oldest_file_is_anchored(tmp_path: Path) -> None:
    log = await rotated_log(tmp_path, keep=2, lines=80)
    path = log.settings.path
    anchor = json.loads(anchor_path(path).read_text())
    oldest = json.loads(lines_of(rotated_path(path, 2))[0])
    assert anchor["seq"] == oldest["seq"] > 1 and anchor["prev"] == oldest["prev"]
    report = verify(path)
    assert report.is_intact, report.problems
    assert report.files == ["audit.log.2", "audit.log.1", "audit.log"]
    assert report.head_seq == 80


async def test_tampering_is_detected_in_rotated_files_too(tmp_path: Path) -> None:
    log = await rotated_log(tmp_path, keep=3, lines=80)
    path = log.settings.path
    middle = rotated_path(path, 1)
    lines = lines_of(middle)
    lines[1] = lines[1].replace('"tenant":"t1"', '"tenant":"t2"')
    middle.write_text("".join(lines))
    assert kinds(path) == [("audit.log.1", 2, "edited")]


async def test_a_removed_rotated_file_or_an_unanchored_start_is_detected(tmp_path: Path) -> None:
    log = await rotated_log(tmp_path, keep=3, lines=80)
    path = log.settings.path
    rotated_path(path, 2).unlink()
    found = kinds(path)
    assert ("audit.log.2", 0, "missing") in found
    assert any(kind == "broken_link" for _, _, kind in found)
    # Removing the oldest file is only legitimate with an anchor recording the new start.
    log = await rotated_log(tmp_path / "b", keep=3, lines=80)
    path = log.settings.path
    anchor_path(path).unlink()
    rotated_path(path, 3).unlink()
    assert kinds(path) == [("audit.log.2", 1, "unanchored")]


async def test_a_crash_between_anchor_and_drop_still_verifies(tmp_path: Path) -> None:
    log = await rotated_log(tmp_path, keep=2, lines=80)
    path = log.settings.path
    # Simulate: the anchor moved on, but the file it replaces was not dropped yet.
    anchor = json.loads(anchor_path(path).read_text())
    start = json.loads(lines_of(rotated_path(path, 1))[0])
    anchor.update(seq=start["seq"], prev=start["prev"])
    anchor_path(path).write_text(json.dumps(anchor))
    assert verify(path).is_intact


def test_verify_without_a_log_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(tmp_path / "nothing.log"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "unusable"


def test_verify_uses_the_configured_log_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CORRAL_STATE_DIR", str(tmp_path))
    assert main(["audit", "verify"]) == 2
    assert str(tmp_path / "audit" / "audit.log") in capsys.readouterr().err
    monkeypatch.setenv("CORRAL_AUDIT_LOG", str(tmp_path / "elsewhere.log"))
    asyncio.run(_one_event(tmp_path / "elsewhere.log"))
    assert main(["audit", "verify"]) == 0


async def _one_event(path: Path) -> None:
    log = await AuditLog.open(AuditSettings(path))
    await log.record("test.event")


def test_settings_from_env(tmp_path: Path) -> None:
    settings = AuditSettings.from_env(
        tmp_path,
        {"CORRAL_AUDIT_MAX_BYTES": "8192", "CORRAL_AUDIT_KEEP": "2", "CORRAL_AUDIT_FSYNC": "off"},
    )
    assert settings.path == tmp_path / "audit" / "audit.log"
    assert (settings.max_bytes, settings.keep, settings.fsync) == (8192, 2, False)
