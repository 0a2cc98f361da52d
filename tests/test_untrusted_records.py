"""What any client of the engine's NATS may write, read without an exception escaping: a
task whose ids cannot be subject tokens is malformed (dropped, not run and held for ever),
a ``workers`` or ``triggers`` KV value of the wrong shape is read as missing, JSON nested
too deep is text, a stored definition that is no object is one line. The chaos suite
(tests/chaos/test_chaos_poison.py) sends all of them to a running engine."""

from __future__ import annotations

import json

import pytest

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
