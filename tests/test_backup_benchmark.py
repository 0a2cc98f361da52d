"""``benchmarks/backup.py --mb 3`` reports every figure, positive and consistent.

Benchmarks are not timed tests: the speeds are reported by the script, never judged here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backup.py"


@pytest.mark.timeout(180)
def test_small_run_reports_positive_consistent_figures():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--mb", "3"],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    stream = report["stream"]
    assert stream["payload_bytes"] >= 3_000_000
    assert 800 <= stream["event_bytes_avg"] <= 1200  # ~1 KB events
    assert stream["stream_bytes"] > stream["payload_bytes"]  # subjects, headers, seqs stored too
    figures = [
        report["raw"]["publish_async_mb_per_s"],
        report["raw"]["ordered_read_mb_per_s"],
        report["backup"]["mb_per_s"],
        report["restore"]["mb_per_s"],
    ]
    assert all(isinstance(x, int | float) and 0 < x < 100_000 for x in figures), figures
    backup, restore = report["backup"], report["restore"]
    assert (restore["messages"], restore["bytes"]) == (stream["messages"], stream["stream_bytes"])
    assert 0 < backup["file_bytes"] < stream["stream_bytes"]  # S2-compressed
    ratio = stream["stream_bytes"] / backup["file_bytes"]
    assert backup["compression"] == pytest.approx(ratio, 0.01)
    mb = stream["stream_bytes"] / 1e6  # every MB/s is stream bytes over wall time
    assert backup["mb_per_s"] == pytest.approx(mb / backup["seconds"], rel=0.1, abs=0.2)
    assert restore["mb_per_s"] == pytest.approx(mb / restore["seconds"], rel=0.1, abs=0.2)
    ratio = report["ratios"]["backup_vs_read"]
    assert ratio == pytest.approx(backup["mb_per_s"] / report["raw"]["ordered_read_mb_per_s"], 0.01)
    assert report["machine"]["nats_server"] and report["machine"]["cpu_count"] >= 1
