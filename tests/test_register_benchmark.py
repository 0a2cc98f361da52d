"""``benchmarks/register.py --quick`` reports every figure, positive and consistent.

Benchmarks are not timed tests: the seconds are reported by the script (with whether the
issue's 2 s target is met), never judged here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "register.py"
SECONDS = [
    "validate_dict_s",
    "validate_json_file_s",
    "validate_yaml_file_s",
    "cli_validate_s",
    "register_dict_s",
    "register_yaml_file_s",
    "raw_kv_put_s",
    "raw_publish_s",
]


@pytest.mark.timeout(180)
def test_quick_run_reports_every_figure():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=170
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    rows = report["results"]
    assert [(r["shape"], r["steps"]) for r in rows] == [
        ("chain", 100),
        ("fan", 100),
        ("chain", 1000),
        ("fan", 1000),
    ]
    for row in rows:
        for key in SECONDS:
            assert isinstance(row[key], float) and 0 < row[key] < 120, (row, key)
        assert 60 * row["steps"] < row["json_bytes"] < 100 * row["steps"], row
    assert 0 < report["cli_startup_s"] < 60
    judged = [r[k] for r in rows for k in SECONDS[:-2]]
    assert report["slowest_s"] == max(judged)
    assert report["target_met"] == (report["slowest_s"] <= report["target_s"] == 2.0)
    assert report["machine"]["nats_server"] and report["machine"]["cpu_count"] >= 1
