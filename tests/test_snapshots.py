"""Snapshots of active runs and their checkpoint (runtime.snapshots), and the restart that
loads them and reads only the history after the checkpoint (issue 15). Each restart here
is the engine's own ``pause`` / ``resume`` (a new orchestrator on the same server); what
the stream holds in between is changed as a crash, a lost write or an older engine would
leave it. ``tests/test_crash_recovery.py`` does the same with SIGKILL."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from conftest import checkpointed, until

import dagnats_nb as dn
from dagnats_nb.runtime import snapshots as snap
from dagnats_nb.transport.reading import last_data, purge_subject
from dagnats_nb.wire import protocol

TWO_GATES = {
    "name": "two-gates",
    "steps": [
        {"id": "a", "task": "work"},
        {
            "id": "g1",
            "type": "approval",
            "depends_on": ["a"],
            "config": {"subject": "approvals.g1", "timeout": "1h"},
        },
        {"id": "b", "task": "work", "depends_on": ["g1"]},
        {
            "id": "g2",
            "type": "approval",
            "depends_on": ["b"],
            "config": {"subject": "approvals.g2", "timeout": "1h"},
        },
        {"id": "c", "task": "work", "depends_on": ["g2"]},
    ],
}


@pytest.fixture
def engine(tmp_path):
    calls: Counter = Counter()
    eng = dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, snapshot_restart=True)

    @eng.task("work")
    def work(ctx):
        calls[(ctx.run_id, ctx.step_id)] += 1
        return {"step": ctx.step_id}

    eng.register(TWO_GATES)
    eng.calls = calls
    with eng:
        yield eng


def _status(eng, run_id: str, step: str) -> str:
    summary = eng.run_state(run_id)  # None until its start is applied
    return summary["state"].step(step).status if summary else "pending"


def _at_gate(eng, run_id: str, gate: str) -> bool:
    return _status(eng, run_id, gate) == "running" and bool(eng._call(_token(eng, run_id, gate)))


async def _token(eng, run_id: str, gate: str):
    kv = await eng._js.key_value(protocol.APPROVAL_BUCKET)
    try:
        return (await kv.get(f"{run_id}.{gate}")).value
    except Exception:
        return None


def _subjects(eng, prefix: str = snap.RUN) -> set[str]:
    info = eng._call(eng._js.stream_info(snap.STREAM, subjects_filter=prefix + ">"))
    return {s[len(prefix) :] for s in (info.state.subjects or {})}


def _message(eng, subject: str) -> bytes:
    return eng._call(last_data(eng._js, snap.STREAM, subject))


def _put(eng, subject: str, data: bytes) -> None:
    eng._call(eng._js.publish(subject, data))


def protocol_dedup_window(eng) -> float:
    info = eng._call(eng._js.stream_info(protocol.HISTORY_STREAM))
    return info.config.duplicate_window


def _finish(eng, run_ids: list[str]) -> None:
    """Approve every gate of the runs as they reach it; all complete."""
    for gate in ("g1", "g2"):
        for rid in run_ids:
            if _status(eng, rid, gate) != "completed":
                until(lambda rid=rid, gate=gate: _at_gate(eng, rid, gate), timeout=20)
                eng.approve(rid, gate)
    for rid in run_ids:
        assert eng.get_run(rid).wait(timeout=20).status == "completed"


def _once_each(eng, run_ids: list[str]) -> None:
    for rid in run_ids:
        assert [eng.calls[(rid, s)] for s in "abc"] == [1, 1, 1], rid
        types = list(eng.events(rid)["type"])
        assert types.count("workflow.completed") == 1
        assert types.count("step.completed") == 3 and types.count("approval.granted") == 2


def test_the_stream_holds_the_active_runs_and_the_checkpoint_lists_them(engine):
    waiting = [engine.start_run("two-gates", input={"n": i}).id for i in range(4)]
    for rid in waiting:
        until(lambda rid=rid: _at_gate(engine, rid, "g1"))
    done = engine.start_run("two-gates", input={"n": 9})
    _finish(engine, [done.id])
    head = checkpointed(engine)
    assert head["seq"] == engine.orchestrator.last_seq
    assert sorted(rid for rid, _ in head["runs"]) == sorted(waiting)
    assert _subjects(engine) == set(waiting)  # the finished run's snapshot was purged
    one = json.loads(_message(engine, snap.RUN + waiting[0]))
    assert one["v"] == 1 and one["cut"] <= head["seq"]
    assert one["state"]["steps"]["g1"]["status"] == "running"
    assert _subjects(engine, snap.DEF) == {engine.run_state(waiting[0])["state"].def_hash}

    _finish(engine, waiting[:2])  # two end: their snapshots go with the next checkpoint
    head = checkpointed(engine)
    assert sorted(rid for rid, _ in head["runs"]) == sorted(waiting[2:])
    until(lambda: _subjects(engine) == set(waiting[2:]), timeout=5, what="purged snapshots")


def test_restart_loads_the_snapshots_and_replays_no_history(engine):
    runs = [engine.start_run("two-gates", input={"n": i}).id for i in range(3)]
    for rid in runs:
        until(lambda rid=rid: _at_gate(engine, rid, "g1"))
    engine.approve(runs[0], "g1")
    until(lambda: _at_gate(engine, runs[0], "g2"))
    engine.pause()  # a clean stop writes a checkpoint at the last event
    engine.resume()
    o = engine.orchestrator
    assert o.restored_from > 0 and o.counters["runs_restored"] == 3
    assert o.replayed_events == 0 and o.counters["runs_rebuilt"] == 0
    assert _status(engine, runs[0], "g2") == "running"
    _finish(engine, runs)
    _once_each(engine, runs)


def test_lost_older_and_unreadable_snapshots_are_rebuilt_from_the_history(engine):
    lost, older, unreadable, fine = (
        engine.start_run("two-gates", input={"n": i}).id for i in range(4)
    )
    for rid in (lost, older, unreadable, fine):
        until(lambda rid=rid: _at_gate(engine, rid, "g1"))
    checkpointed(engine)
    at_g1 = _message(engine, snap.RUN + older)
    engine.approve(older, "g1")  # moves on to g2: the snapshot kept above is behind
    until(lambda: _at_gate(engine, older, "g2"))
    engine.pause()
    engine._call(purge_subject(engine._js, snap.STREAM, snap.RUN + lost))
    _put(engine, snap.RUN + older, at_g1)
    _put(engine, snap.RUN + unreadable, json.dumps({"v": 99, "state": {}, "cut": 1}).encode())
    engine.resume()
    o = engine.orchestrator
    assert o.counters["runs_restored"] == 1 and o.counters["runs_rebuilt"] == 3
    assert _status(engine, older, "g2") == "running"  # the older snapshot + its history
    assert _status(engine, lost, "g1") == "running"
    _finish(engine, [lost, older, unreadable, fine])
    _once_each(engine, [lost, older, unreadable, fine])


def test_snapshots_newer_than_the_checkpoint_are_trusted_and_applied_once(engine):
    """A crash between the snapshots and the checkpoint: the stream holds snapshots cut
    after the checkpoint (one of a run started after it)."""
    first = engine.start_run("two-gates", input={"n": 1}).id
    until(lambda: _at_gate(engine, first, "g1"))
    old_head = json.dumps(checkpointed(engine)).encode()
    engine.approve(first, "g1")
    later = engine.start_run("two-gates", input={"n": 2}).id
    until(lambda: _at_gate(engine, first, "g2") and _at_gate(engine, later, "g1"))
    checkpointed(engine)
    engine.pause()
    _put(engine, snap.CHECKPOINT, old_head)
    engine.resume()
    o = engine.orchestrator
    assert o.restored_from == json.loads(old_head)["seq"]
    assert o.counters["runs_restored"] == 2 and o.counters["starts_repeated"] == 0
    assert o.replayed_events > 0  # the history after the old checkpoint, each event skipped
    assert _status(engine, first, "g2") == "running"
    _finish(engine, [first, later])
    _once_each(engine, [first, later])


def test_an_ended_runs_leftover_snapshot_is_ignored_and_purged(engine):
    """A crash between the checkpoint and the purge leaves an ended run's snapshot."""
    run = engine.start_run("two-gates", input={"n": 1}).id
    until(lambda: _at_gate(engine, run, "g1"))
    checkpointed(engine)
    leftover = _message(engine, snap.RUN + run)
    _finish(engine, [run])
    checkpointed(engine)
    engine.pause()
    _put(engine, snap.RUN + run, leftover)
    engine.resume()
    o = engine.orchestrator
    assert o.counters["runs_restored"] == 0 and run not in o.runs
    assert _subjects(engine) == set()
    assert engine.get_run(run).status == "completed"
    _once_each(engine, [run])


def test_without_a_checkpoint_the_whole_history_is_replayed(engine):
    runs = [engine.start_run("two-gates", input={"n": i}).id for i in range(2)]
    for rid in runs:
        until(lambda rid=rid: _at_gate(engine, rid, "g1"))
    engine.pause()
    engine._call(purge_subject(engine._js, snap.STREAM, snap.CHECKPOINT))
    engine.resume()
    o = engine.orchestrator
    assert o.restored_from == 0 and o.replayed_events == o.last_seq
    _finish(engine, runs)
    _once_each(engine, runs)


def test_a_run_started_again_after_a_snapshot_restart_is_not_run_twice(engine):
    run = engine.start_run("two-gates", input={"n": 1})
    until(lambda: _at_gate(engine, run.id, "g1"))
    _finish(engine, [run.id])
    engine.pause()
    engine.resume()
    o = engine.orchestrator
    assert run.id not in o.runs  # ended before the checkpoint: not loaded
    started = engine.events(run.id).iloc[0]
    assert started["type"] == "workflow.started"
    again = protocol.Event(
        type="workflow.started",
        run_id=run.id,
        timestamp=protocol.now_rfc3339(),
        payload=started["payload"],
    )
    engine._call(engine._js.publish(protocol.history_subject(run.id), again.encode()))
    until(lambda: o.counters["starts_repeated"] == 1, what="the repeated start seen")
    assert run.id not in o.runs
    _once_each(engine, [run.id])


def test_a_parent_resumed_after_its_child_ended_hears_of_the_end(engine):
    """The checkpoint lists the parent waiting for its child, and the child ended before
    it (the parent never heard: the crash came between the child's end and the report).
    The resumed parent finds the ended child in its history, not memory, and goes on."""
    engine.register(
        {
            "name": "parent",
            "steps": [{"id": "sub", "type": "sub_workflow", "config": {"workflow": "two-gates"}}],
        }
    )
    parent = engine.start_run("parent", input={"n": 1}).id
    child = f"{parent}-sub"
    until(lambda: engine.run_state(child) and _at_gate(engine, child, "g1"))
    checkpointed(engine)
    waiting = _message(engine, snap.RUN + parent)
    last = json.loads(waiting)["state"]["last_seq"]
    _finish(engine, [child])
    assert engine.get_run(parent).wait(timeout=20).status == "completed"
    ended_at = time.time()
    head = checkpointed(engine)
    engine.pause()
    heard = engine.events(parent).query(f"seq > {last}")["seq"]  # what the parent heard
    for seq in heard:
        engine._call(engine._js.delete_msg(protocol.HISTORY_STREAM, int(seq)))
    # the report sent again has the deleted one's message id: past the history's 5 s
    # duplicate window, as after a real crash, the server stores it
    time.sleep(protocol_dedup_window(engine) + 0.1 - (time.time() - ended_at))
    head["runs"] = [[parent, last]]
    _put(engine, snap.RUN + parent, waiting)
    _put(engine, snap.CHECKPOINT, json.dumps(head).encode())
    engine.resume()
    o = engine.orchestrator
    assert o.counters["runs_restored"] == 1 and child not in o.runs  # the parent alone
    assert engine.get_run(parent).wait(timeout=20).status == "completed"
    assert engine.get_run(parent).output == {"step": "c"}  # the child's, reported again
    assert list(engine.events(child)["type"]).count("workflow.started") == 1


def test_a_long_whole_replay_tells_its_progress(tmp_path, monkeypatch, caplog):
    """A whole replay (snapshot_restart off, or no checkpoint yet) has no time limit at
    start: it says how far it is instead."""
    from dagnats_nb.runtime import orchestrator

    monkeypatch.setattr(orchestrator, "PROGRESS_EVERY", 5)
    opts = dict(data_dir=tmp_path / "e", llm_enabled=False, snapshot_restart=False)
    with dn.Engine.start(**opts) as eng:
        eng.add_handler("work", lambda ctx: 1)
        for _ in range(3):
            eng.run({"name": "w", "steps": [{"id": "a", "task": "work"}]}, timeout=20)
        total = eng.orchestrator.last_seq
    logger = "dagnats_nb.runtime.orchestrator"
    with caplog.at_level("WARNING", logger=logger), dn.Engine.start(**opts) as eng:
        assert eng.orchestrator.replayed_events >= total
    lines = [r.getMessage() for r in caplog.records if "replaying the history" in r.getMessage()]
    assert len(lines) == total // 5 and f"of {total}," in lines[-1]
