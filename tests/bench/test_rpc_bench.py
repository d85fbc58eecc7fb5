"""Smoke tests of bench/rpc.py and bench/rpc_instructions.py: quick runs print every figure.

They run the real peers (a worker process for bench/rpc.py; both endpoints in one process for
bench/rpc_instructions.py). Figures are printed by the benches and never asserted here, only
that each was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_json(*argv: str) -> Any:
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_rpc_quick_run_measures_every_test_and_judges_every_target() -> None:
    doc = run_json(str(BENCH / "rpc.py"), "--quick", "--json")
    assert doc["environment"]["malloc"] == "tuned"  # as corral's host and workers run
    measured = {(r["subject"], r["mode"], r["payload_bytes"]) for r in doc["results"]}
    for subject in ("floor", "corral"):
        for mode in ("sequential", "pipelined"):
            for size in (100, 1024 * 1024):
                assert (subject, mode, size) in measured
    for row in doc["results"]:
        assert row["calls_s"] > 0
        if row["subject"] == "corral":
            assert row["calls_s_vs_floor"] > 0
    assert len(doc["targets"]) == 4
    assert all(check["value"] > 0 and isinstance(check["met"], bool) for check in doc["targets"])


def test_rpc_instructions_times_both_peers_in_one_process() -> None:
    doc = run_json(str(BENCH / "rpc_instructions.py"), "--no-valgrind", "--rounds", "1", "--json")
    rows = {(r["subject"], r["mode"]): r for r in doc["results"]}
    assert set(rows) == {(s, m) for s in ("floor", "corral") for m in ("sequential", "pipelined")}
    assert all(row["us_per_call"] > 0 for row in rows.values())
    assert rows[("corral", "sequential")]["us_vs_floor"] > 0


def test_rpc_instructions_child_mode_runs_the_calls_it_is_given() -> None:
    # What valgrind runs twice per figure; an echo that came back wrong would exit non-zero.
    script = str(BENCH / "rpc_instructions.py")
    for subject in ("floor", "corral"):
        done = subprocess.run(
            [sys.executable, script, "--run", subject, "pipelined", "200"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
