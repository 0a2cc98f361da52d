"""Finished runs leave the orchestrator's memory once their record is stored (issue 15,
runtime.eviction): memory follows the active runs, and every read, wait and watch of a run
that left answers as before, from its record."""

from __future__ import annotations

import threading

import pytest
from conftest import checkpointed, until
from nats.js.api import DiscardPolicy

import dagnats_nb as dn
from dagnats_nb.observe.report import format_status
from dagnats_nb.runtime import eviction, records

CHAIN = {
    "name": "chain",
    "steps": [
        {"id": "a", "task": "inc"},
        {"id": "b", "task": "inc", "depends_on": ["a"]},
    ],
}
HELD = {"name": "held", "steps": [{"id": "h", "task": "hold"}]}


@pytest.fixture
def engine(tmp_path):
    release = threading.Event()
    eng = dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False)
    eng.add_handler("inc", lambda ctx: (ctx.input or 0) + 1)

    def hold(ctx):
        release.wait(30)
        return "released"

    eng.add_handler("hold", hold, concurrency=4)
    eng.register(CHAIN)
    eng.register(HELD)
    eng.release = release
    with eng:
        yield eng
    release.set()


def test_memory_holds_the_active_runs_only(engine):
    o = engine.orchestrator
    held = [engine.start_run("held") for _ in range(3)]
    done = [engine.run("chain", i, timeout=20) for i in range(40)]
    until(lambda: set(o.runs) == {r.id for r in held}, what="ended runs to leave memory")
    assert o.counters["runs_evicted"] >= 40
    events, steps = o.finished_sample["chain"][-1]  # what sizing() reads of ended runs
    assert steps == 2 and events >= 6  # started, 2 x (queued, started, completed), completed
    # what memory answered before, the records answer now
    assert [engine.get_run(r.id).output for r in done] == [i + 2 for i in range(40)]
    assert set(engine.runs()["run_id"]) >= {r.id for r in done + held}
    steps = engine.steps(done[0].id).set_index("step_id")
    assert list(steps["status"]) == ["completed", "completed"]
    assert engine.step_output(done[0].id, "a") == 1
    status = engine.status()["orchestrator"]  # what `dagnats status` prints
    assert status["runs"] == status["active_runs"] == 3
    assert status["runs_left_memory"] == o.counters["runs_evicted"] >= 40
    until(lambda: engine.status()["orchestrator"]["checkpoint_seq"] > 0, what="a checkpoint")
    text = format_status(engine.status())
    assert "runs: 3 active, 3 in memory, " in text and "ended since start" in text
    assert "checkpoint: history message " in text
    engine.release.set()
    for run in held:
        assert run.wait(20).status == "completed"
    until(lambda: not o.runs, what="the held runs to leave memory")


def test_wait_and_watch_of_a_run_that_left_memory(engine):
    o = engine.orchestrator
    runs = [engine.run("chain", i, timeout=20) for i in range(eviction.RECENT + 5)]
    first = runs[0].id
    until(lambda: first not in o.runs and o.known_ended(first) is None, what="eviction")
    assert engine.wait_run(first, timeout=5) == "completed"  # from its record
    seen = []
    unwatch = engine.watch(first, lambda state: seen.append(state.status))
    until(lambda: seen == ["completed"], what="the watch called once with the record's state")
    unwatch()
    last = runs[-1].id  # just ended: among the recent ones, no record read
    assert o.known_ended(last) is not None and engine.wait_run(last, timeout=5) == "completed"


def test_a_run_that_left_memory_is_known_to_webhooks_and_triggers(engine):
    run = engine.run("chain", 1, timeout=20)
    o = engine.orchestrator
    until(lambda: run.id not in o.runs)
    o.recent.clear()  # as if long ago
    assert engine._call(engine._run_known(run.id)) is True
    assert engine._call(engine._run_known("never-started")) is False


def test_without_snapshot_restart_every_run_stays(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, snapshot_restart=False) as eng:
        eng.add_handler("inc", lambda ctx: (ctx.input or 0) + 1)
        ids = [eng.run(CHAIN, i, timeout=20).id for i in range(5)]
        assert set(ids) <= set(eng.orchestrator.runs)
        assert eng.orchestrator.counters["runs_evicted"] == 0


def fill_records(eng: dn.Engine) -> None:
    """Make the ``workflow_runs`` bucket refuse new writes, as a full store does."""

    async def fill():
        info = await eng._js.stream_info("KV_workflow_runs")
        cfg = info.config
        cfg.max_msgs, cfg.discard = max(info.state.messages, 1), DiscardPolicy.NEW
        await eng._js.update_stream(cfg)

    eng._call(fill())


def test_a_run_whose_final_record_failed_stays_until_it_is_stored(tmp_path, monkeypatch):
    """The ``workflow_runs`` bucket refuses writes when runs end (as a full store does):
    the runs stay in memory and in the checkpoint, and their records are written once there
    is room: by the retry while the engine runs, by the restart after a stop."""
    monkeypatch.setattr(records, "RETRY", 0.5)
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data, llm_enabled=False) as eng:
        eng.add_handler("inc", lambda ctx: (ctx.input or 0) + 1)
        eng.register(CHAIN)
        o = eng.orchestrator
        eng.run("chain", 0, timeout=20)  # one record in the bucket
        fill_records(eng)
        retried = eng.run("chain", 1, timeout=20)
        stopped = eng.run("chain", 2, timeout=20)
        assert {retried.id, stopped.id} <= set(o.runs)  # no record stored: they stay
        assert o.records.failed >= 2
        listed = {rid for rid, _ in checkpointed(eng)["runs"]}
        assert {retried.id, stopped.id} <= listed
        eng._call(eng._ensure_resources())  # our bucket's limits again: room
        until(lambda: retried.id not in o.runs, what="the retried record to let the run go")
        assert eng._call(o.records.ended(retried.id)).output == 3
        fill_records(eng)
        again = eng.run("chain", 3, timeout=20)
        assert again.id in o.runs
    with dn.Engine.start(data_dir=data, llm_enabled=False) as eng:  # our limits again
        o = eng.orchestrator
        assert o.restored_from > 0
        until(lambda: again.id not in o.runs, what="the restart to store the record")
        assert eng.get_run(again.id).status == "completed"
        assert eng.get_run(again.id).output == 5
