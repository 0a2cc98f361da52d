"""``benchmarks/engine.py --quick`` and ``benchmarks/waiting.py --quick`` run and report
every figure with a plausible value.

Benchmarks are not timed tests: the targets are reported by the script, never judged here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine.py"

# (section, key, low, high): each figure must be a number within these loose bounds.
FIGURES = [
    ("raw", "publish_async_per_s", 100, 10_000_000),
    ("raw", "publish_sync_per_s", 10, 10_000_000),
    ("raw", "fetch_ack_per_s", 100, 10_000_000),
    ("raw", "fetch_ack_sync_per_s", 10, 10_000_000),
    ("raw", "fetch_ack_sync_gathered_per_s", 10, 10_000_000),
    ("raw", "kv_put_per_s", 10, 10_000_000),
    ("raw", "kv_put_pipelined_per_s", 10, 10_000_000),
    ("engine", "steps_per_s", 1, 10_000_000),
    ("engine", "runs_per_s", 0.1, 1_000_000),
    ("engine", "step_latency_p50_ms", 0.001, 60_000),
    ("engine", "step_latency_p99_ms", 0.001, 60_000),
    ("engine", "step_latency_p50_low_load_ms", 0.001, 60_000),
    ("engine", "events_per_run", 12, 200),  # 10 steps x (queued, started, completed) + 2
    ("engine", "bytes_per_event", 50, 10_000),
    ("memory", "tracemalloc_bytes_per_run", 1, 1_000_000),
    ("memory", "rss_bytes_per_run", -1_000_000, 10_000_000),  # RSS can even shrink
    # ended runs leave memory: what is left is the recent-runs LRU and the sizing sample
    ("memory", "tracemalloc_bytes_per_completed_run", -100_000, 10_000_000),
    ("memory", "start_runs_per_s", 1, 10_000_000),
    ("replay", "history_events", 1_000, 10_000_000),
    ("replay", "time_to_ready_s", 0.001, 600),
    ("replay", "events_replayed", 1_000, 10_000_000),
    ("replay", "replay_seconds", 0.0001, 600),
    ("replay", "replay_events_per_s", 10, 100_000_000),
]
TARGETS = [
    "engine_steps_per_s",
    "step_latency_p50_low_load_ms",
    "bytes_per_event",
    "bytes_per_active_run",
    "restart_100k_events_ready_s",
]


@pytest.fixture(scope="module")
def report() -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("section", "key", "low", "high"), FIGURES)
def test_quick_run_reports_the_figure(report, section, key, low, high):
    value = report[section][key]
    assert isinstance(value, int | float) and not isinstance(value, bool), (section, key, value)
    assert low <= value <= high, f"{section}.{key} = {value} is not plausible"


@pytest.mark.timeout(300)
def test_quick_run_is_consistent(report):
    engine, replay = report["engine"], report["replay"]
    assert report["mode"] == "quick"
    assert engine["failed_runs"] == 0
    assert engine["runs"] == report["sizes"]["engine_runs"]
    assert engine["step_latency_p99_ms"] >= engine["step_latency_p50_ms"]
    assert engine["loaded"]["samples"] == engine["runs"] * 10
    assert replay["events_replayed"] == replay["history_events"]
    assert replay["time_to_ready_s"] >= replay["replay_seconds"]
    assert replay["runs_held_after_restart"] == replay["runs"]  # snapshot_restart off
    snap = replay["snapshot_restart"]  # the default: the checkpoint was at the last event
    assert snap["events_replayed"] == 0
    held = snap["runs_held_after_restart"]  # only the active runs, from their snapshots
    assert held == snap["runs_restored"] == replay["active_runs_after_restart"] > 0
    assert report["memory"]["active_runs_held"] >= report["memory"]["runs"]


@pytest.mark.timeout(300)
def test_quick_run_reports_targets_and_machine(report):
    for name in TARGETS:
        target = report["targets"][name]
        assert {"target", "measured", "met"} <= set(target), name
        assert isinstance(target["met"], bool)
    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    for key in ("python", "nats_server", "nats_py"):
        assert machine[key], key


# -- benchmarks/waiting.py --quick: 500 sleeping and 500 approval-waiting runs -----------

WAITING_SCRIPT = SCRIPT.parent / "waiting.py"

# (path, low, high): every figure a number within loose bounds (seconds, bytes, runs/s).
WAITING_FIGURES = [
    (("raw", "publish_async_per_s"), 100, 10_000_000),
    (("sleep", "memory", "tracemalloc_bytes_per_run"), 50, 1_000_000),
    (("sleep", "held", "run_state_bytes_per_run"), 50, 1_000_000),
    (("sleep", "held", "timer_bytes_per_run"), 10, 1_000_000),
    (("sleep", "lateness_stored", "p50_s"), -1, 120),
    (("sleep", "lateness_stored", "p99_s"), -1, 120),
    (("sleep", "lateness_stored", "max_s"), -1, 120),
    (("sleep", "lateness_fired", "p99_s"), -1, 120),
    (("sleep", "all_completed_after_due_s"), -1, 300),
    (("sleep", "start_seconds"), 0.001, 600),
    (("approval", "memory", "tracemalloc_bytes_per_run"), 50, 1_000_000),
    (("approval", "start_seconds"), 0.001, 600),
    (("approval", "approve", "approve_all_seconds"), 0.001, 600),
    (("approval", "approve", "gathered_per_s"), 1, 10_000_000),
    (("approval", "all_completed_after_first_approve_s"), 0.001, 600),
    (("restart", "time_to_ready_s"), 0.001, 600),
    (("restart", "lateness_stored", "p99_s"), -1, 120),
    (("rss", "sleep_rss_bytes_per_run"), -1_000_000, 10_000_000),  # RSS can even shrink
    (("rss", "approval_rss_bytes_per_run"), -1_000_000, 10_000_000),
]


@pytest.fixture(scope="module")
def waiting_report() -> dict:
    proc = subprocess.run(
        [sys.executable, str(WAITING_SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "low", "high"), WAITING_FIGURES)
def test_waiting_quick_run_reports_the_figure(waiting_report, path, low, high):
    value = waiting_report
    for key in path:
        value = value[key]
    assert isinstance(value, int | float) and not isinstance(value, bool), (path, value)
    assert low <= value <= high, f"{'.'.join(path)} = {value} is not plausible"


@pytest.mark.timeout(300)
def test_waiting_quick_run_is_consistent(waiting_report):
    r = waiting_report
    n = r["runs"]
    assert r["mode"] == "quick" and n == 500
    for phase in ("sleep", "restart"):
        p = r[phase]
        assert p["woken"] == p["completed"] == n, phase  # every run woke once and ended
        late = p["lateness_stored"]
        assert late["samples"] == n
        assert late["min_s"] <= late["p50_s"] <= late["p90_s"] <= late["p99_s"] <= late["max_s"]
    assert r["sleep"]["orchestrator_timers_while_waiting"] >= n
    assert r["sleep"]["held"]["timers"] == n
    assert r["restart"]["timers_after_restart"] >= n  # rebuilt from the history
    assert r["restart"]["runs_restored"] >= n  # loaded from their snapshots
    assert r["restart"]["events_replayed"] < n  # the history before the checkpoint is not read
    assert r["approval"]["approve"]["sequential"] + r["approval"]["approve"]["gathered"] == n


@pytest.mark.timeout(300)
def test_waiting_quick_run_reports_targets(waiting_report):
    t = waiting_report["targets"]
    assert t["bytes_per_waiting_run"] == 2048 and t["p99_lateness_s"] == 1.0
    assert set(t["met"]) == {"bytes_per_waiting_run", "p99_lateness_s"}
    assert all(isinstance(v, bool) for v in t["met"].values())
    assert waiting_report["machine"]["nats_server"]


# -- benchmarks/history.py --quick: 20,000 finished runs, 100 waiting, a kill -9, a restart --

HISTORY_SCRIPT = SCRIPT.parent / "history.py"
HISTORY_READS = ["get_run_status", "get_run_output", "steps", "step_output", "events"]
RAW_READS = ["raw_kv_get", "raw_history_read"]  # nats-py alone, beside them

# (path, low, high): every figure a number within loose bounds (seconds, bytes, msgs/s).
HISTORY_FIGURES = [
    (("raw", "publish_async_per_s"), 100, 10_000_000),
    (("fixture", "msgs_per_s"), 100, 10_000_000),
    (("fixture", "publish_seconds"), 0.001, 600),
    (("fixture", "history_bytes"), 1_000_000, 10**10),
    (("fixture", "records_bytes"), 1_000_000, 10**10),
    (("before", "restart_s"), 0.001, 600),
    (("before", "replay_events_per_s"), 10, 100_000_000),
    (("before", "rss_bytes"), 10 * 2**20, 16 * 2**30),
    (("restart", "restart_s"), 0.001, 600),
    (("restart", "server_start_s"), 0.001, 600),
    (("restart", "rss_bytes"), 10 * 2**20, 16 * 2**30),
    (("base", "rss_bytes"), 10 * 2**20, 16 * 2**30),
    (("restart", "approve", "seconds"), 0.0001, 600),
    (("restart", "runs_list", "seconds"), 0.0001, 600),
    *[
        (("restart", "reads", r, q), 0.001, 60_000)
        for r in HISTORY_READS + RAW_READS
        for q in ("p50_ms", "p99_ms")
    ],
]


@pytest.fixture(scope="module")
def history_report() -> dict:
    proc = subprocess.run(
        [sys.executable, str(HISTORY_SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "low", "high"), HISTORY_FIGURES)
def test_history_quick_run_reports_the_figure(history_report, path, low, high):
    value = history_report
    for key in path:
        value = value[key]
    assert isinstance(value, int | float) and not isinstance(value, bool), (path, value)
    assert low <= value <= high, f"{'.'.join(path)} = {value} is not plausible"


@pytest.mark.timeout(300)
def test_history_quick_run_is_consistent(history_report):
    r = history_report
    n, a = r["sizes"]["finished"], r["sizes"]["active"]
    assert r["mode"] == "quick" and (n, a) == (20_000, 100)
    fx, before, rs = r["fixture"], r["before"], r["restart"]
    templates = len(fx["templates"])
    assert fx["records"] == n + templates and sum(fx["counts"]) == n
    # each run: its template's events and its record
    assert fx["messages"] == fx["history_events"] - sum(fx["template_events"]) + n
    assert before["restored_from_checkpoint"] == 0  # no checkpoint: the whole history
    assert before["events_replayed"] == fx["history_events"]
    assert rs["stale_engine_json_cleaned"]  # it was SIGKILLed
    assert rs["restored_from_checkpoint"] > 0 and rs["runs_restored"] == a
    assert rs["events_replayed"] <= rs["suffix_events"]
    assert rs["active_waiting"] == a
    assert (rs["approve"]["approved"], rs["approve"]["completed"]) == (a, a)
    for name in HISTORY_READS + RAW_READS:
        read = rs["reads"][name]
        assert read["n"] == r["sizes"]["reads"] and read["wrong_answers"] == 0, name
        assert read["p99_ms"] >= read["p50_ms"]
    assert rs["runs_list"]["rows"] == n + templates + a
    assert r["rss_over_base_bytes"] == rs["rss_bytes"] - r["base"]["rss_bytes"]


@pytest.mark.timeout(300)
def test_history_quick_run_reports_targets(history_report):
    t = history_report["targets"]
    names = ["rss_after_restart_bytes", "restart_ready_s", "events_replayed", "active_runs_resume"]
    for name in names + [f"read_{r}_p50_ms" for r in HISTORY_READS]:
        assert {"target", "measured", "met"} <= set(t[name]), name
        assert isinstance(t[name]["met"], bool), name
    assert isinstance(t["all_met"], bool)
    machine = history_report["machine"]
    assert machine["nats_server"] and machine["loadavg_at_start"]
