"""Smoke test of bench/scale.py: `--quick --json` runs both phases and every activation answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCALE = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def test_scale_quick_json_document_has_every_figure_and_every_activation_answered() -> None:
    done = subprocess.run(
        [sys.executable, str(SCALE), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    n = doc["activations"]
    assert n == 20
    assert doc["limits"]["nofile_soft"] >= doc["limits"]["nofile_needed"]

    live = doc["all_live"]
    assert live["live_workers"] == n and live["answered"] == n and live["restarts"] == 0
    assert live["states"] == {"ready": n}
    memory = live["memory"]
    assert memory["workers_measured"] == n
    for figure in ("total_rss_mib", "total_uss_mib", "workers_uss_mib", "host_rss_mib"):
        assert memory[figure] > 0
    assert 0 < memory["worker_uss_mib"]["median"] <= memory["worker_uss_mib"]["p90"]
    hook = live["webhook"]
    assert hook["statuses"] == {"200": hook["requests"]} and hook["requests"] == 200
    assert 0 < hook["p50_ms"] <= hook["p99_ms"]
    assert live["activation_s"] > 0 and live["idle_cpu"]["window_s"] > 0

    idle = doc["scale_to_zero"]
    assert idle["live_workers_after_idle"] == 0 and idle["restarts"] == 0
    first = idle["first_call"]
    assert first["answered"] == first["requests"] == 10
    assert first["statuses"] == {"200": 10} and first["p50_ms"] > 0
