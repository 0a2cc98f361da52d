"""The event envelope and task payload of WIRE.md: encoding, message ids, timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from dagnats_nb.dag.events import Event, TaskPayload, format_time, parse_time
from dagnats_nb.wire import protocol


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_format_time_matches_datetime_isoformat(ts):
    expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
    assert format_time(ts) == expected.replace("+00:00", "Z")
    assert abs(parse_time(format_time(ts)) - ts) <= 1e-6 + 1e-9 * ts


def test_envelope_omits_empty_fields_and_round_trips():
    run = Event(
        type=protocol.WORKFLOW_STARTED, run_id="r1", timestamp="2026-01-01T00:00:00.000000Z"
    )
    assert json.loads(run.encode()) == {
        "type": "workflow.started",
        "run_id": "r1",
        "timestamp": "2026-01-01T00:00:00.000000Z",
    }
    step = Event(
        type=protocol.STEP_FAILED,
        run_id="r1",
        step_id="fetch",
        payload={"error": "boom", "failure_type": "retriable"},
        worker_id="w1",
        attempt_number=2,
    )
    back = Event.decode(step.encode(), seq=7)
    assert back.to_wire() == step.to_wire() and back.seq == 7


def test_message_ids_follow_wire_md():
    assert Event(type="workflow.started", run_id="r").msg_id == "r.workflow.started"
    assert Event(type="step.completed", run_id="r", step_id="s").msg_id == "r.s.step.completed"
    assert (
        Event(type="step.failed", run_id="r", step_id="s", attempt_number=3).msg_id
        == "r.s.step.failed.3"
    )
    inst = Event(type="step.queued", run_id="r", step_id="m", map_index=4, attempt_number=1)
    assert inst.msg_id == "r.m.map.4.step.queued.1"  # Go's map instance id
    loop = Event(type="step.continue", run_id="r", step_id="l", iteration=2, attempt_number=1)
    assert loop.msg_id == "r.l.step.continue.1.n2"


def test_task_payload_wire_form():
    task = TaskPayload(
        run_id="r", step_id="s", task="t", input={"a": 1}, workflow_name="w", attempt=2, map_index=3
    )
    wire = json.loads(task.encode())
    assert wire["task_id"] == "r.s.map.3" and wire["step_id"] == "s.map.3"
    assert wire["attempt"] == 2 and wire["input"] == {"a": 1}
    assert wire["workflow_name"] == "w" and "iteration" not in wire  # not an agent loop
    assert TaskPayload.decode(task.encode()) == task
    looped = TaskPayload(run_id="r", step_id="s", task="t", input=1, workflow_name="w", iteration=0)
    assert json.loads(looped.encode())["iteration"] == 0
    assert TaskPayload.decode(looped.encode()).iteration == 0
    assert (
        protocol.task_subject("t", "r") == "task.t.r"
        and protocol.history_subject("r") == "history.r"
    )
    assert (
        protocol.dead_subject("t", "r", "s") == "dead.t.r.s"
        and protocol.stream_subject("r", "s") == "stream.r.s"
    )
    assert "def_hash" not in wire
    pinned = TaskPayload(
        run_id="r", step_id="s", task="t", input=1, workflow_name="w", def_hash="abc123"
    )
    assert json.loads(pinned.encode())["def_hash"] == "abc123"
    assert TaskPayload.decode(pinned.encode()).def_hash == "abc123"


def test_subject_tokens():
    assert protocol.is_token("fetch-urls") and protocol.is_token("report_error")
    for bad in ("a.b", "a*", "a>", "a b", ""):
        assert not protocol.is_token(bad)


def test_a_task_as_the_go_engine_sends_it():
    """Go's TaskPayload: no ``task`` (the subject names it), attempt and iteration left off
    when zero, a map instance as ``{step}.map.{i}``."""
    body = {
        "task_id": "R1.resize.map.2",
        "run_id": "R1",
        "step_id": "resize.map.2",
        "input": "img-2.png",
        "workflow_name": "images",
        "dispatch_nonce": "N1",
    }
    task = TaskPayload.decode(json.dumps(body).encode(), "task.resize.R1")
    assert (task.task, task.step_id, task.map_index, task.attempt) == ("resize", "resize", 2, 1)
    assert task.iteration is None and task.input == "img-2.png" and task.task_id == body["task_id"]
    grouped = TaskPayload.decode(json.dumps(body).encode(), "task.resize.gpu.R1")
    assert grouped.task == "resize"
    for bad in (b"[1, 2, 3]", b"5", b'"x"'):
        try:
            TaskPayload.decode(bad, "task.t.r")
        except ValueError as exc:
            assert "must be a JSON object" in str(exc)
        else:
            raise AssertionError(f"{bad!r} decoded")


def test_consumer_names_are_gos():
    assert protocol.consumer_name("ggreet") == "workers-ggreet"
    assert protocol.consumer_name("send.email") == "workers-send-email"
    assert protocol.consumer_name("a b*c") == "workers-a_b_c"
    assert protocol.consumer_name("render", "gpu") == "workers-render-gpu"
