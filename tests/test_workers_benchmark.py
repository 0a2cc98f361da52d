"""``benchmarks/workers.py --quick`` runs every case and reports plausible figures.

Not a timed test: the scaling is reported by the script (benchmarks/README.md), not judged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "workers.py"


@pytest.fixture(scope="module")
def report() -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--processes", "0,1,2"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(300)
def test_every_case_ran_every_step_in_the_processes_it_names(report):
    assert report["mode"] == "quick"
    cases = {c["worker_processes"]: c for c in report["cases"]}
    assert sorted(cases) == [0, 1, 2]
    runs = report["sizes"]["case_runs"] * report["sizes"]["rounds"]
    for n, case in cases.items():
        assert case["failed_runs"] == 0, n
        assert case["runs"] == runs
        by_worker = case["steps_by_worker"]
        assert sum(by_worker.values()) == runs * 10, (n, by_worker)
        if n == 0:
            assert case["in_kernel_worker"] is True and len(by_worker) == 1
            assert case["busy"]["worker_processes"] == []
        else:  # the engine has no handler: every step ran in one of the n processes
            assert set(by_worker) == {f"bench-{i}" for i in range(n)}, by_worker
            assert all(v > 0 for v in by_worker.values()), by_worker
            assert case["worker_exit_codes"] == [0] * n
            assert len(case["busy"]["worker_processes"]) == n


@pytest.mark.timeout(300)
def test_figures_are_plausible(report):
    assert report["raw"]["publish_async_per_s"] > 100
    assert report["ceiling"]["steps_per_s"] == round(report["raw"]["publish_async_per_s"] / 5, 1)
    for case in report["cases"]:
        assert 1 <= case["steps_per_s"] <= 1_000_000
        assert case["steps_per_s_rounds"] and case["step_latency_p50_ms"] > 0
        assert case["step_latency_p99_ms"] >= case["step_latency_p50_ms"]
        for part in ("engine_thread", "engine_process", "nats_server"):
            assert 0 <= case["busy"][part] <= 4, (part, case["busy"])
        assert all(0 <= b <= 4 for b in case["busy"]["worker_processes"])
    speedup = report["speedup_vs_in_kernel"]
    assert speedup["0"] == 1.0 and speedup["1"] > 0 and speedup["2"] > 0
    assert report["machine"]["cpu_count"] >= 1
