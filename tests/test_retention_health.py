"""The ``history retention`` health rule (issue 15): with ``snapshot_restart`` a restart
needs the checkpoint, the active runs' snapshots and the history after the checkpoint, so
the rule watches that history against the limits; without it, a restart replays the whole
history and the rule watches the oldest active run's start. Pure cases first, then real
engines whose checkpoint or history is changed as a stuck cycle or retention would."""

from __future__ import annotations

import json
import time

import pytest
from conftest import checkpointed, until

import dagnats_nb as dn
from dagnats_nb.observe import health
from dagnats_nb.runtime import snapshots as snap
from dagnats_nb.wire import protocol

T = health.Thresholds()
NOW = 100_000.0
GATE = {
    "name": "held",
    "steps": [
        {"id": "a", "task": "work"},
        {
            "id": "g",
            "type": "approval",
            "depends_on": ["a"],
            "config": {"subject": "approvals.g", "timeout": "1h"},
        },
    ],
}


def retention(**kw) -> health.Retention:
    base = dict(
        first_seq=1,
        last_seq=1000,
        messages=1000,
        bytes=1000 * 300,
        first_at=NOW - 3600,
        max_age_s=86400.0,
        max_bytes=None,
        snapshot_restart=True,
        checkpoint_seq=990,
        checkpoint_at=NOW - 2,
        applied_seq=1000,
        active_runs=5,
        oldest_active_at=NOW - 600,
    )
    return health.Retention(**{**base, **kw})


def rows(r: health.Retention) -> list[dict]:
    snapshot = health.Snapshot(
        now=NOW,
        consumers=[],
        store_bytes=0,
        max_store_bytes=1,
        dlq_samples=[],
        workers=[],
        retention=r,
    )
    return [x for x in health.evaluate(snapshot, T) if x["check"] == "history retention"]


def only(r: health.Retention) -> dict:
    (row,) = rows(r)
    return row


def test_from_the_checkpoint_ok_warning_critical():
    ok = only(retention())
    assert (ok["level"], ok["subject"], ok["action"]) == ("ok", "restart from the checkpoint", "")
    # retention removed messages 991..1009: a restart from S = 990 misses them
    cut = only(retention(first_seq=1010))
    assert cut["level"] == "critical" and cut["value"] == 19 and cut["threshold"] == 0
    assert "991-1009" in cut["action"] and "snapshot writes fail" in cut["action"]
    assert only(retention(first_seq=991))["level"] == "ok"  # S + 1 is still there
    assert only(retention(first_seq=992))["level"] == "critical"
    # bytes after S (10 messages of 300 B) against history_max_bytes: 50 % warns
    assert only(retention(max_bytes=6000))["level"] == "warning"
    assert only(retention(max_bytes=6001))["level"] == "ok"
    # the checkpoint's age against runs_max_age (events came after it)
    aged = only(retention(checkpoint_at=NOW - 200, max_age_s=400.0))
    assert aged["level"] == "warning" and aged["value"] == 0.5
    assert (
        only(retention(checkpoint_seq=1000, checkpoint_at=NOW - 200, max_age_s=400.0))["level"]
        == "ok"
    )  # nothing came after S: nothing a restart needs can age out


def test_a_checkpoint_left_behind_warns_only_with_active_runs_and_events_after_it():
    stuck = only(retention(checkpoint_at=NOW - 301, snapshots_failed=7))
    assert stuck["level"] == "warning" and stuck["threshold"] == 300
    assert "stuck or failing (7 failed writes" in stuck["action"]
    # idle runs waiting on an approval write no checkpoint, and need none
    assert only(retention(checkpoint_at=NOW - 3000, checkpoint_seq=1000))["level"] == "ok"
    assert only(retention(checkpoint_at=NOW - 3000, active_runs=0))["level"] == "ok"


def test_full_replay_watches_the_oldest_active_runs_start():
    full = dict(snapshot_restart=False, max_age_s=1000.0, first_at=NOW - 1000)
    ok = only(retention(**full, oldest_active_at=NOW - 100))
    assert (ok["level"], ok["subject"], ok["value"]) == ("ok", "full replay", 0.1)
    near = only(retention(**full, oldest_active_at=NOW - 901))
    assert near["level"] == "warning" and "ages out in 99 s" in near["action"]
    gone = only(retention(**full, oldest_active_at=NOW - 1000))
    assert gone["level"] == "critical" and "is lost" in gone["action"]
    # a byte limit cut its start already (the history begins after it)
    cut = only(retention(**{**full, "first_at": NOW - 50}, oldest_active_at=NOW - 100))
    assert cut["level"] == "critical"
    # a full byte limit, the run's start among the oldest 10 % of what is kept
    capped = dict(full, max_age_s=None, max_bytes=300_000)
    assert only(retention(**capped, oldest_active_at=NOW - 990))["level"] == "warning"
    assert only(retention(**capped, oldest_active_at=NOW - 800))["level"] == "ok"
    # no limit: nothing ages out
    unbounded = {**full, "max_age_s": None, "first_at": NOW - 1e7}
    assert only(retention(**unbounded, oldest_active_at=NOW - 9e6))["level"] == "ok"
    # snapshot_restart without a checkpoint yet is a full replay too
    assert only(retention(checkpoint_seq=None))["subject"] == "full replay (no checkpoint yet)"


def test_runs_without_a_snapshot_are_watched_as_a_full_replay():
    both = rows(retention(snapshots_too_large=2, max_age_s=650.0))
    by = {r["subject"]: r["level"] for r in both}
    assert by == {
        "restart from the checkpoint": "ok",
        "runs without a snapshot (too large)": "warning",  # 600 s of 650
    }
    assert (
        health.history_retention(
            health.Snapshot(
                now=NOW, consumers=[], store_bytes=0, max_store_bytes=1, dlq_samples=[], workers=[]
            ),
            T,
        )
        == []
    )  # no orchestrator in this process: no row


def _row(eng) -> dict:
    df = eng.health()
    (row,) = df[df["check"] == "history retention"].to_dict("records")
    return row


def _put_checkpoint(eng, head: dict) -> None:
    eng._call(eng._js.publish(snap.CHECKPOINT, json.dumps(head).encode()))


def _waiting(eng, n: int) -> list:
    runs = [eng.start_run("held", input=i) for i in range(n)]
    for run in runs:
        until(lambda run=run: run.status == "running" and _step(eng, run, "g") == "running")
    return runs


def _step(eng, run, step: str) -> str:
    summary = eng.run_state(run.id)
    return summary["state"].step(step).status if summary else "pending"


@pytest.fixture
def restarting(tmp_path):
    eng = dn.Engine.start(
        data_dir=tmp_path / "e",
        llm_enabled=False,
        snapshot_restart=True,
        runs_max_age="1h",
        history_max_bytes="1MiB",
    )

    @eng.task("work")
    def work(ctx):
        return {"n": ctx.input}

    eng.register(GATE)
    with eng:
        yield eng


def test_engine_with_snapshot_restart_ok_then_stuck_then_cut(restarting):
    eng = restarting
    runs = _waiting(eng, 3)
    head = checkpointed(eng)
    row = _row(eng)
    assert (row["level"], row["subject"]) == ("ok", "restart from the checkpoint")
    assert row["value"] == 0  # nothing after the checkpoint
    last = eng.orchestrator.last_seq
    assert head["seq"] == last > 3

    # A checkpoint 10 minutes old and one event behind: the cycle looks stuck.
    _put_checkpoint(eng, {**head, "seq": last - 1, "at": time.time() - 600})
    row = _row(eng)
    assert row["level"] == "warning" and row["value"] >= 600 and row["threshold"] == 300
    assert "3 runs active" in row["action"]
    eng.approve(runs[0].id, "g")  # the next cycle writes a current checkpoint
    assert runs[0].wait(timeout=20).status == "completed"
    until(lambda: _row(eng)["level"] == "ok", timeout=10, what="the warning to clear")

    # Retention cut history a restart from an old checkpoint needs.
    head = checkpointed(eng)
    last = head["seq"]
    _put_checkpoint(eng, {**head, "seq": 2})  # held back: a restart would read from 3
    api = f"$JS.API.STREAM.PURGE.{protocol.HISTORY_STREAM}"
    eng._call(eng._nc.request(api, json.dumps({"seq": last}).encode(), timeout=5))
    row = _row(eng)
    assert row["level"] == "critical" and row["value"] == last - 3  # messages 3..last-1
    assert f"messages 3-{last - 1}" in row["action"]
    assert any(r["check"] == "history retention" for r in eng.status()["health"])
    eng.approve(runs[1].id, "g")  # a new checkpoint after the cut: a restart is safe again
    assert runs[1].wait(timeout=20).status == "completed"
    until(lambda: _row(eng)["level"] == "ok", timeout=10, what="the critical to clear")


def test_engine_without_snapshot_restart_warns_then_loses_the_oldest_run(tmp_path):
    """The old danger, live: a run waits longer than runs_max_age; its workflow.started
    ages out of the history, and a full replay would not find it."""
    with dn.Engine.start(
        data_dir=tmp_path / "e", llm_enabled=False, snapshot_restart=False, runs_max_age="8s"
    ) as eng:

        @eng.task("work")
        def work(ctx):
            return 1

        eng.register(GATE)
        row = _row(eng)
        assert (row["level"], row["subject"], row["value"]) == ("ok", "full replay", 0)
        _waiting(eng, 1)
        assert _row(eng)["level"] == "ok"
        warned = until(lambda: (r := _row(eng))["level"] != "ok" and r, timeout=15)
        assert warned["level"] == "warning" and warned["value"] >= 0.9
        gone = until(lambda: (r := _row(eng))["level"] == "critical" and r, timeout=15)
        assert gone["value"] >= 1 and "is lost" in gone["action"]
