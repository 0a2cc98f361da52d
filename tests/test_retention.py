"""Retention of run records and payloads (``runtime.retention``), on a real embedded engine:
what a pass prunes (ended runs' records and objects, once older than the age), what it
keeps (waiting runs, recent runs), that it reads the expired records plus one and no
more, that ``runs_max_age: 0`` keeps everything, and that the hourly pass runs by itself."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import nats
import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.errors import DagnatsError, WorkflowError
from dagnats_nb.runtime import retention

BIG = "x" * 1_100_000  # over the 1 MiB message limit: kept in the payloads object store
GATE = {"id": "ok", "type": "approval", "config": {"subject": "approvals.keep", "timeout": "1h"}}


def _subjects(engine, stream: str, subjects: str) -> dict[str, int]:
    """The subjects of ``stream`` that hold messages, read by a separate client."""

    async def read():
        nc = await nats.connect(engine.connect_url)
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=subjects)
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    return asyncio.run(read())


def records(engine) -> set[str]:
    """Run ids with a message under ``run.{id}`` in KV workflow_runs (a marker counts)."""
    found = _subjects(engine, "KV_workflow_runs", "$KV.workflow_runs.run.>")
    return {s.removeprefix("$KV.workflow_runs.run.") for s in found}


def objects(engine) -> tuple[set[str], int]:
    """The owners (run ids) of the objects in ``payloads``, and how many chunk subjects."""
    metas = _subjects(engine, "OBJ_payloads", "$O.payloads.M.>")
    chunks = _subjects(engine, "OBJ_payloads", "$O.payloads.C.>")
    names = [base64.urlsafe_b64decode(s.rpartition(".")[2]).decode() for s in metas]
    return {n.partition("/")[0] for n in names}, len(chunks)


@pytest.fixture
def eng(tmp_path):
    e = dn.Engine.start(data_dir=tmp_path / "engine", llm_enabled=False)

    @e.task("big")
    def big(ctx):
        return {"blob": BIG}

    @e.task("small")
    def small(ctx):
        return {"n": ctx.input.get("n", 0)}

    e.register({"name": "big", "steps": [{"id": "s", "task": "big"}]})
    e.register({"name": "small", "steps": [{"id": "s", "task": "small"}]})
    e.register({"name": "gate", "steps": [GATE]})
    try:
        yield e
    finally:
        e.stop()


def test_ended_runs_lose_record_and_payloads_waiting_and_recent_runs_keep_them(eng):
    waiting = eng.start_run("gate", input={"blob": BIG})  # its input is an object too
    until(lambda: waiting.id in records(eng), what="the waiting run's record")
    old = eng.run("big", timeout=30)
    with pytest.warns(dn.UnservedTaskWarning):  # nobody serves "nope": it waits, cancelled
        failed = eng.start_run({"name": "bad", "steps": [{"id": "s", "task": "nope"}]})
    eng.cancel_run(failed.id)
    assert failed.wait(timeout=10).status == "cancelled"
    assert old.status == "completed" and old.output == {"blob": BIG}
    owners, chunks = objects(eng)
    assert owners == {waiting.id, old.id} and chunks == 2
    time.sleep(1.5)
    recent = eng.run("big", timeout=30)
    assert {waiting.id, old.id, failed.id, recent.id} <= records(eng)

    done = eng.prune(max_age=1.2)  # old ones: ended 1.5 s ago or more; recent: just now

    assert records(eng) & {waiting.id, old.id, failed.id, recent.id} == {waiting.id, recent.id}
    owners, chunks = objects(eng)
    assert owners == {waiting.id, recent.id} and chunks == 2
    assert done["records_pruned"] == 2 and done["payloads_deleted"] == 1
    assert done["payload_bytes"] > len(BIG) and done["complete"] is True
    assert done["max_age"] == 1.2 and done["cutoff"].endswith("Z")
    assert eng.get_run(recent.id).status == "completed"
    with pytest.raises(WorkflowError, match="is missing"):  # its large output went
        eng.step_output(old.id, "s")
    assert eng.get_run(waiting.id).status == "running"
    eng.approve(waiting.id, "ok", by="ada")  # the waiting run's input was kept: it goes on
    assert waiting.wait(timeout=20).status == "completed"

    again = eng.prune(max_age=1.2)
    assert again["records_pruned"] == 0 and again["payloads_deleted"] == 0
    assert records(eng) >= {waiting.id, recent.id}


def test_a_pass_reads_the_expired_records_and_one_more(eng):
    old = [eng.run("small", input={"n": i}, timeout=20).id for i in range(3)]
    time.sleep(2.0)
    new = [eng.run("small", input={"n": i}, timeout=20).id for i in range(5)]
    assert set(old + new) <= records(eng)

    done = eng.prune(max_age=1.5)

    assert done["records_pruned"] == 3
    assert done["records_read"] == 4  # the 3 expired, then the first newer one: stop
    assert records(eng) & set(old + new) == set(new)
    capped = eng.prune(max_age=0.0001, limit=2)  # all 5 expired now; 2 a pass
    assert capped["records_read"] == 2 and capped["records_pruned"] == 2
    assert capped["complete"] is False
    assert records(eng) & set(new) == set(new[2:])


def _put_records(engine, values: dict[str, bytes]) -> None:
    """Write ``run.{id}`` records as another client (a Go engine) would."""

    async def put():
        nc = await nats.connect(engine.connect_url)
        try:
            kv = await nc.jetstream().key_value("workflow_runs")
            for run_id, value in values.items():
                await kv.put(f"run.{run_id}", value)
        finally:
            await nc.close()

    asyncio.run(put())


def test_only_terminal_records_that_ended_before_the_cutoff_go(eng):
    waiting = eng.start_run("gate")
    until(lambda: waiting.id in records(eng), what="the waiting run's record")
    long_ago = "2020-01-01T00:00:00.123456789Z"

    def rec(run_id: str, status: str, ended: str) -> bytes:
        return json.dumps({"run_id": run_id, "status": status, "completed_at": ended}).encode()

    _put_records(
        eng,
        {
            "done": rec("done", "completed", long_ago),
            "go-compensated": rec("go-compensated", "compensated", long_ago),
            "still-running": rec("still-running", "running", long_ago),
            "clock-ahead": rec("clock-ahead", "failed", "2999-01-01T00:00:00Z"),
            "garbage": b"not json",
            waiting.id: rec(waiting.id, "completed", long_ago),  # ours holds it running
        },
    )
    time.sleep(0.6)

    done = eng.prune(max_age=0.5)

    assert done["records_read"] == 6 and done["records_pruned"] == 2
    left = {"still-running", "clock-ahead", "garbage", waiting.id}
    assert records(eng) == left


def test_a_capped_pass_goes_on_where_the_last_one_stopped(eng):
    def rec(run_id: str, status: str) -> bytes:
        ended = "2020-01-01T00:00:00Z"
        return json.dumps({"run_id": run_id, "status": status, "completed_at": ended}).encode()

    waiting = {f"w{i}": rec(f"w{i}", "running") for i in range(3)}  # old, never pruned
    _put_records(eng, waiting | {"d1": rec("d1", "completed"), "d2": rec("d2", "failed")})
    time.sleep(0.6)
    first = eng.prune(max_age=0.5, limit=2)
    assert (first["records_read"], first["records_pruned"], first["complete"]) == (2, 0, False)
    second = eng.prune(max_age=0.5, limit=2)  # not the same two waiting ones again
    assert (second["records_read"], second["records_pruned"]) == (2, 1)
    third = eng.prune(max_age=0.5, limit=2)
    assert (third["records_read"], third["records_pruned"], third["complete"]) == (1, 1, True)
    assert records(eng) == set(waiting)
    fourth = eng.prune(max_age=0.5, limit=2)  # from the first record again
    assert (fourth["records_read"], fourth["records_pruned"]) == (2, 0)


def test_a_childs_objects_stay_while_its_parent_runs_or_keeps_its_record(eng):
    eng.register({"name": "kid", "steps": [{"id": "s", "task": "big"}]})
    child_step = {"id": "c", "type": "sub_workflow", "config": {"workflow": "kid"}}
    gate = {**GATE, "depends_on": ["c"]}
    parent = eng.start_run({"name": "parent", "steps": [child_step, gate]})
    child = f"{parent.id}-c"  # its output is an object the parent's step c refers to
    until(lambda: child in objects(eng)[0] and child in records(eng), what="the child's end")
    time.sleep(0.6)
    first = eng.prune(max_age=0.5)
    assert first["records_pruned"] == 1 and child not in records(eng)
    assert objects(eng)[0] == {child}  # the parent runs: its child's output stays
    eng.approve(parent.id, "ok")
    assert parent.wait(timeout=20).status == "completed"
    time.sleep(0.6)
    second = eng.prune(max_age=0.5)
    assert second["records_pruned"] == 1 and second["payloads_deleted"] == 1
    assert objects(eng) == (set(), 0)


def _put_objects(engine, names: list[str]) -> None:
    async def put():
        nc = await nats.connect(engine.connect_url)
        try:
            store = await nc.jetstream().object_store("payloads")
            for name in names:
                await store.put(name, b"[1, 2, 3]")
        finally:
            await nc.close()

    asyncio.run(put())


def test_objects_of_runs_without_a_record_go_once_a_minute_old(eng, monkeypatch):
    hexa = "0" * 32
    _put_records(eng, {"kept": json.dumps({"run_id": "kept", "status": "running"}).encode()})
    _put_objects(eng, [f"ghost/s/output/{hexa}", f"kept/s/output/{hexa}", "not a run/x"])
    time.sleep(0.6)
    first = eng.prune(max_age=0.5)  # no record, but put less than ORPHAN_AGE ago: stays
    assert first["payloads_read"] == 3 and first["payloads_deleted"] == 0
    monkeypatch.setattr(retention, "ORPHAN_AGE", 0.0)
    second = eng.prune(max_age=0.5)
    assert second["payloads_deleted"] == 1
    assert objects(eng) == ({"kept", "not a run"}, 2)


def test_runs_max_age_0_prunes_nothing(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, runs_max_age=0) as e:
        e.add_handler("small", lambda ctx: 1)
        run = e.run({"name": "small", "steps": [{"id": "s", "task": "small"}]}, timeout=20)
        done = e.prune()
        assert done["records_pruned"] == 0 and done["records_read"] == 0
        assert done["max_age"] is None
        assert run.id in records(e)
        assert e.pruner is not None and e.pruner._task is None  # no pass scheduled


def test_the_scheduled_pass_prunes_by_runs_max_age(tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "FIRST_DELAY", 0.2)
    monkeypatch.setattr(retention, "INTERVAL", 0.5)
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, runs_max_age="5s") as e:
        e.add_handler("big", lambda ctx: {"blob": BIG})
        run = e.run({"name": "big", "steps": [{"id": "s", "task": "big"}]}, timeout=30)
        assert run.id in records(e) and objects(e)[0] == {run.id}
        until(lambda: run.id not in records(e), timeout=30, what="the scheduled prune")
        assert objects(e) == (set(), 0)
        assert e.pruner.passes >= 2  # the first found it too young


def test_an_attached_engine_does_not_prune(eng):
    attached = dn.Engine.connect(data_dir=eng.settings.data_dir)
    try:
        assert attached.pruner is None
        with pytest.raises(DagnatsError, match="cannot prune on an attached engine"):
            attached.prune(max_age=1)
    finally:
        attached.stop()
    with pytest.raises(DagnatsError, match="negative"):
        eng.prune(max_age=-1)
