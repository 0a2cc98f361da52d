"""What any client of the engine's NATS may write, read without an exception escaping: a
task whose ids cannot be subject tokens is malformed (dropped, not run and held for ever),
a ``workers`` or ``triggers`` KV value of the wrong shape is read as missing, JSON nested
too deep is text, a stored definition that is no object is one line. The chaos suite
(tests/chaos/test_chaos_poison.py) sends all of them to a running engine."""

from __future__ import annotations

import json

import pytest

import dagnats_nb as dn
from dagnats_nb.errors import WorkflowError
from dagnats_nb.runtime.gates import parse_value
from dagnats_nb.runtime.triggers import readable
from dagnats_nb.transport.stores import _stored
from dagnats_nb.wire.protocol import TaskPayload
from dagnats_nb.wire.workers import read_entry

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"run_id": "has space", "step_id": "a"}, "must be names"),
        ({"run_id": "r.1", "step_id": "a"}, "must be names"),
        ({"run_id": ["r"], "step_id": "a"}, "must be names"),
        ({"run_id": "r", "step_id": 5}, "must be names"),
        ({"run_id": "r", "step_id": None}, "must be names"),
        ({"run_id": "r", "step_id": "a*"}, "must be names"),
        ({"run_id": "r", "step_id": "a", "attempt": "x"}, "attempt must be a positive integer"),
        ({"run_id": "r", "step_id": "a", "attempt": True}, "attempt must be a positive integer"),
        ({"run_id": "r", "step_id": "a", "attempt": -1}, "attempt must be a positive integer"),
        ({"run_id": "r", "step_id": "a", "timeout_s": "soon"}, "timeout_s must be a number"),
    ],
)
def test_a_task_whose_fields_cannot_be_used_is_malformed(body, why):
    with pytest.raises(ValueError, match=why):
        TaskPayload.decode(json.dumps(body).encode(), "task.t.r")


def test_well_formed_tasks_still_decode():
    go_map = {"task_id": "R1.resize.map.2", "run_id": "R1", "step_id": "resize.map.2"}
    task = TaskPayload.decode(json.dumps(go_map).encode(), "task.resize.R1")
    assert (task.step_id, task.map_index, task.attempt, task.timeout_s) == ("resize", 2, 1, None)
    ours = {"run_id": "R1", "step_id": "a", "task": "t", "attempt": 3, "timeout_s": 1.5}
    task = TaskPayload.decode(json.dumps(ours).encode())
    assert (task.attempt, task.timeout_s) == (3, 1.5)
    planned = {"run_id": "R1", "step_id": "plan.step1"}  # a planner's step: dots are fine
    assert TaskPayload.decode(json.dumps(planned).encode(), "task.llm.R1").step_id == "plan.step1"


def test_a_workers_entry_of_any_shape_is_read():
    for body in ([1, 2], 5, None, {"tasks": [1]}, {"task_types": 5, "heartbeat_at": 5}):
        entry = read_entry(body)
        assert entry.tasks == {} and entry.heartbeat_at is None, body
    odd = read_entry({"worker_id": "w", "tasks": {"a": {"concurrency": "many"}, "b": 3}})
    assert odd.tasks == {"a": 0, "b": None}
    go = read_entry({"worker_id": "g", "task_types": ["x"], "last_seen": "2026-11-30T10:00:00Z"})
    assert go.tasks == {"x": None} and go.heartbeat_at is not None


def test_trigger_records_that_cannot_be_read():
    assert readable({"id": "t", "workflow_id": "w", "cron": {"expression": "* * * * *"}})
    assert readable({"id": "t", "http": {"path": "/a"}})  # Go leaves workflow_id off here
    for rec in (
        [1],
        {"id": ["t"]},
        {"id": ""},
        {"id": "t", "cron": "every minute"},
        {"id": "t", "subject": "x"},
        {"id": "t", "workflow_id": ["w"], "subject": {"subject": "x"}},
    ):
        assert not readable(rec), rec


def test_json_nested_too_deep_is_text_and_a_stored_definition_must_be_an_object():
    assert parse_value(DEEP) == DEEP.decode()
    for value, why in (
        (b"", "is not JSON"),
        (DEEP, "is nested too deep"),
        (b"[1, 2]", "is a JSON list, not an object"),
    ):
        with pytest.raises(WorkflowError) as err:
            _stored("w", value)
        assert why in str(err.value) and "\n" not in str(err.value)
    assert _stored("w", b'{"name": "w"}') == {"name": "w"}


def test_a_history_message_that_is_no_event_is_one_line_and_the_engine_goes_on(engine, caplog):
    """Junk on a history subject (not JSON, no type, another run's subject) is skipped with
    one warning line each, no traceback (a replay would print it again at every start), and
    named in the orchestrator's errors; a run after it completes."""
    import asyncio
    import logging

    import nats

    async def publish() -> None:
        nc = await nats.connect(engine.connect_url)
        js = nc.jetstream()
        await js.publish("history.junk1", b"not json")
        await js.publish("history.junk2", json.dumps({"run_id": "junk2"}).encode())
        other = {"type": "workflow.started", "run_id": "elsewhere"}
        await js.publish("history.junk3", json.dumps(other).encode())
        await nc.close()

    engine.add_handler("echo", lambda ctx: ctx.input)
    with caplog.at_level(logging.WARNING, logger="dagnats_nb.runtime.orchestrator"):
        asyncio.run(publish())
        run = engine.run({"name": "after-junk", "steps": [{"id": "e", "task": "echo"}]}, 7)
    assert run.status == "completed" and run.output == 7
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3, [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in skipped)
    assert "does not match subject history.junk3" in skipped[2].getMessage()
    assert sum("skipped" in e for e in engine.orchestrator.errors) == 3


def test_an_attached_engine_reads_a_run_whose_record_is_not_json(engine):
    """Someone wrote junk under the run's ``workflow_runs`` key: an attached engine answers
    from the history instead of raising."""
    import asyncio

    import nats

    engine.add_handler("echo", lambda ctx: ctx.input)
    run = engine.run({"name": "junk-record", "steps": [{"id": "e", "task": "echo"}]}, 1)
    assert run.status == "completed"

    async def spoil() -> None:
        nc = await nats.connect(engine.connect_url)
        kv = await nc.jetstream().key_value("workflow_runs")
        await kv.put(f"run.{run.id}", b"\xff not json")
        await nc.close()

    asyncio.run(spoil())
    attached = dn.Engine.connect(data_dir=engine.settings.data_dir)
    try:
        summary = attached.run_state(run.id)
        assert summary is not None and summary["run_id"] == run.id
        assert summary["workflow"] == "junk-record"
    finally:
        attached.stop()
