"""Smoke test of bench/webhook.py: a quick run prints its JSON document, and wrk saw only 2xx.

It runs the real thing (wrk, `corral serve`, a sandboxed worker, the bare handler), so it is an
integration test; figures are printed by the bench and never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WRK_MISSING_EXIT = 3  # bench/webhook.py: wrk is missing and could not be installed
SUBJECTS = ["bare", "webhook", "webhook-signed"]


def test_quick_run_prints_the_document_and_every_request_got_a_2xx() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "webhook.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=REPO,
        check=False,
    )
    if done.returncode == WRK_MISSING_EXIT:
        pytest.skip("wrk is missing and could not be installed")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)

    assert set(doc) == {"environment", "setup", "plan", "results", "targets"}
    assert doc["setup"]["connections"] == 64
    assert doc["setup"]["instances"] == 1
    assert doc["setup"]["rate_per_minute"] >= 1_000_000
    assert doc["plan"]["rounds"] == 1
    assert [row["subject"] for row in doc["results"]] == SUBJECTS
    for row in doc["results"]:
        assert row["requests"] > 0, row
        assert row["non_2xx"] == 0, row
        assert row["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}, row
        assert row["requests_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert len(row["rounds"]) == 1
        assert ("requests_s_vs_bare" in row) == (row["subject"] != "bare")
    webhook = doc["results"][1]
    assert webhook["workers_cpu_us_per_request"] > 0  # the worker did answer
    [target] = doc["targets"]
    assert isinstance(target["met"], bool)
    assert target["value"] == webhook["requests_s_vs_bare"]
