"""concurrency.max_runs on a real engine: runs beyond the limit wait ``pending`` and start
in the order they were started as slots free up, also across a restart; a waiting run can
be cancelled; sub_workflow children are not held back."""

from __future__ import annotations

import threading
import time

from conftest import until

import dagnats_nb as dn

LIMITED = {
    "name": "limited",
    "concurrency": {"max_runs": 2},
    "steps": [{"id": "work", "task": "work"}],
}


def _statuses(engine, ids):
    return [engine.get_run(r).status for r in ids]


def test_runs_over_the_limit_wait_and_start_in_order(engine):
    gate = threading.Event()
    started: list = []
    running = {"now": 0, "max": 0}
    lock = threading.Lock()

    @engine.task("work", concurrency=10)
    def work(ctx):
        with lock:
            started.append(ctx.input["n"])
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        gate.wait(20)
        time.sleep(0.05)
        with lock:
            running["now"] -= 1
        return ctx.input["n"]

    engine.register(LIMITED)
    runs = [engine.start_run("limited", {"n": n}) for n in range(5)]
    until(lambda: len(started) == 2, what="two runs at work")
    time.sleep(0.3)  # the others stay pending
    assert sorted(started) == [0, 1]
    assert _statuses(engine, [r.id for r in runs[2:]]) == ["pending"] * 3
    table = engine.runs().set_index("run_id")
    assert table.loc[runs[4].id, "status"] == "pending"
    engine.cancel_run(runs[3].id)
    assert runs[3].wait(timeout=20).status == "cancelled"
    gate.set()
    for run in runs:
        run.wait(timeout=30)
    assert _statuses(engine, [r.id for r in runs]) == ["completed"] * 3 + ["cancelled", "completed"]
    assert running["max"] == 2
    assert sorted(started[:2]) == [0, 1] and sorted(started[2:]) == [2, 4]
    admitted = {
        n: engine.events(runs[n].id).set_index("type").loc["workflow.admitted", "seq"]
        for n in (2, 4)
    }
    assert admitted[2] < admitted[4]  # in the order they were started
    types = list(engine.events(runs[4].id)["type"])
    assert types[:2] == ["workflow.started", "workflow.admitted"]
    assert "workflow.admitted" not in set(engine.events(runs[3].id)["type"])


def test_waiting_runs_are_admitted_after_a_restart(tmp_path):
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data) as engine:
        engine.register(LIMITED)  # no worker: the first two runs stay at work
        ids = [engine.start_run("limited", {"n": n}).id for n in range(4)]
        until(lambda: _statuses(engine, ids) == ["running"] * 2 + ["pending"] * 2)
    with dn.Engine.start(data_dir=data) as engine:
        assert _statuses(engine, ids) == ["running"] * 2 + ["pending"] * 2

        @engine.task("work")
        def work(ctx):
            return ctx.input["n"]

        for r in ids:
            assert engine.get_run(r).wait(timeout=30).status == "completed"
        admitted = [engine.events(r).query("type == 'workflow.admitted'") for r in ids]
        assert [len(a) for a in admitted] == [1, 1, 1, 1]
        assert admitted[2]["seq"].iloc[0] < admitted[3]["seq"].iloc[0]
