"""A run's snapshot (``dag.snapshot``, issue 15): plain JSON that decodes to a state equal to
the one encoded, at every point of random runs (so a restart from it resumes as replay
does), for every kind of step detail; and nothing it cannot read is trusted."""

from __future__ import annotations

import dataclasses
import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_advance import (
    Scenario,
    check_outcome,
    prefix_states,
    random_schedule,
    recover,
    scenarios,
    summary,
)
from test_advance import Sim as SimRun

from dagnats_nb.dag import load_workflow
from dagnats_nb.dag import snapshot as snap
from dagnats_nb.dag import state as states
from dagnats_nb.dag.advance import replay
from dagnats_nb.dag.events import STEP_QUEUED, Event, TaskPayload
from dagnats_nb.dag.gates import ApprovalGate, EventWait
from dagnats_nb.dag.state import Failure, Instance, MapState, RunState, StepState


def through_json(state: RunState) -> RunState | None:
    """What a restart reads back: the snapshot stored as bytes and decoded."""
    return snap.decode(orjson.loads(orjson.dumps(snap.encode(state))))


def every_field_set() -> RunState:
    """A state with a value in every field, every detail kind and a map in flight."""
    defn = load_workflow({"name": "x", "steps": [{"id": "a", "task": "a"}]})
    s = RunState("r", "x", "1.0", "h", {"in": [1, 2.5, None]}, 10.0, status="failed")
    s.ended_at, s.output, s.error = 11.5, {"o": True}, "boom"
    s.failure = Failure("a", "it broke", (("undo-a", "a"), ("undo-b", "b")), "cause", True)
    s.steps = {
        "a": StepState("completed", 2, 1, {"i": 1}, [1], "e", 1.0, 1.1, 1.2, 1.3, 1.4, "w1"),
        "m": StepState("running", 1, 0, [1, 2, 3]),
        "wait": StepState("running", detail=EventWait("paid", "order.id", 42, 30.0)),
        "ok": StepState("running", due_at=99.0),
        "child": StepState("running", detail="r-child"),
    }
    s.steps["m"].map = MapState(3, [1, None, None], 3, 1, {1: Instance(), 2: Instance("x", 2, 5)})
    s.steps["ok"].detail = ApprovalGate("s", 60.0, "d", {"k": "v"}, ("ada", "bob"), "tok")
    queued = Event(STEP_QUEUED, "r", "2026-12-01T00:00:00Z", "m", [1], "", 1, 2, 3, 0)
    queued.cache, queued.handler_version = {"hit": False, "key": "k"}, "v1"
    task = TaskPayload("r", "m", "sq", 2, "x", 1, None, 2, 5.0, {"m": "1"}, "h", False, "g", ["c"])
    s.outbox = {queued.msg_id: (queued, task), "other": (queued, None)}
    s.last_seq, s.event_count, s.reopened, s.resumed_at = 7, 9, 1, 10.5
    s.bound_worker, s.legacy = "w1", True
    s.parent_run_id, s.parent_step_id, s.root_run_id, s.depth = "p", "ps", "root", 2
    s.extended = defn
    s.forked_from, s.fork_step, s.reused = "src", "a", frozenset({"a", "b"})
    s.cached, s.versions = {"a": 1}, {"a": "v1"}
    return s


def test_every_field_of_every_state_class_comes_back_equal():
    s = every_field_set()
    back = through_json(s)
    assert back == s
    assert isinstance(back.failure.undo[0], tuple) and back.steps["m"].map.active[2].attempt == 2
    # every field is set away from its default, so a field left out of the codec shows
    for cls, obj in ((RunState, s), (StepState, s.steps["a"])):
        for f in dataclasses.fields(cls):
            if f.name in ("map", "detail"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            assert getattr(obj, f.name) != default, f"{cls.__name__}.{f.name} left at default"
    assert {f.name for f in dataclasses.fields(states.Instance)} == {"status", "attempt", "due_at"}


def test_what_it_cannot_read_is_none():
    good = snap.encode(every_field_set())
    assert snap.decode({**good, "v": snap.VERSION + 1}) is None  # a newer engine's
    assert snap.decode({"v": snap.VERSION}) is None
    assert snap.decode("text") is None
    assert snap.decode({"v": snap.VERSION, "state": {"run_id": "r"}}) is None  # fields missing
    broken = orjson.loads(orjson.dumps(good))
    broken["state"]["steps"]["wait"]["detail"] = {"kind": "unknown"}
    assert snap.decode(broken) is None


def test_an_older_snapshot_without_a_later_field_gets_its_default():
    body = orjson.loads(orjson.dumps(snap.encode(every_field_set())))
    del body["state"]["versions"], body["state"]["cached"]
    back = snap.decode(body)
    assert back is not None and back.versions is None and back.cached is None


PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(sc=scenarios(), seed=st.integers(0, 2**32 - 1))
def test_a_snapshot_at_any_point_of_a_random_run_resumes_as_replay_does(sc: Scenario, seed: int):
    sim = SimRun(sc.defn, sc.script, lag=True, dedup_window=True)
    sim.begin(sc.value)
    random_schedule(sim, random.Random(seed))
    for k, state in enumerate(prefix_states(sc.defn, sim.history)):
        if state is None:
            continue
        back = through_json(state)
        assert back == state, f"prefix {k}"
        # a restart from the snapshot: resume, run to the end, same outcome as a replay
        new = recover(sim, k, back)
        final = random_schedule(new, random.Random(seed + k))
        check_outcome(sc, final)
        assert summary(sc.defn, replay(sc.defn, new.history)) == summary(sc.defn, final)


def test_a_definition_a_planner_extended_comes_back_with_its_dotted_steps():
    """Planned step ids hold the planner's name and a dot, which a file may not: the
    extended definition is rebuilt as the planner made it, not checked again."""
    from dagnats_nb.dag.model import StepDef
    from dagnats_nb.dag.planner import extended

    defn = load_workflow({"name": "p", "steps": [{"id": "plan", "task": "planner"}]})
    planned = StepDef.model_validate({"id": "plan.up", "task": "upper", "type": "normal"})
    state = RunState("r1", "p", "1", "h", None, 1.0, extended=extended(defn, [planned]))
    back = through_json(state)
    assert back is not None and [s.id for s in back.extended.steps] == ["plan", "plan.up"]
    assert back.extended == state.extended
