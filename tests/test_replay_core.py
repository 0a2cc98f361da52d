"""Dead-letter replay and sticky binding in the pure core (``dag.advance``), with the
in-memory simulator of test_advance."""

from __future__ import annotations

import copy
from typing import Any

from test_advance import MAP_WF, RUN, T0, Fail, Sim, ev_at, publishes, summary, timers, wf

from dagnats_nb.dag import events as ev
from dagnats_nb.dag.advance import advance, replay, resume, start
from dagnats_nb.dag.events import Event, format_time
from dagnats_nb.dag.state import (
    COMPLETED,
    FAILED,
    QUEUED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_RUNNING,
    DeadLetter,
    Dispatch,
    SetTimer,
    Timer,
)


def replayed(step_id: str, attempt: int, at: float, map_index: int | None = None) -> Event:
    payload: dict[str, Any] = {"dead_letter_seq": 7}
    if map_index is not None:
        payload["map_index"] = map_index
    return Event(
        ev.STEP_REPLAYED,
        RUN,
        timestamp=format_time(at),
        step_id=step_id,
        payload=payload,
        attempt_number=attempt,
    )


class Flaky:
    """Fails step ``step_id`` for good until ``fixed`` is set (an operator fixed the cause)."""

    def __init__(self, step_id: str, match: Any = None) -> None:
        self.step_id, self.match, self.fixed = step_id, match, False

    def __call__(self, task) -> Any:
        hit = task.step_id == self.step_id and (self.match is None or task.input == self.match)
        if hit and not self.fixed:
            return Fail(ev.NON_RETRIABLE, "bad input")
        if task.step_id == "items":
            return task.input
        return {"from": task.step_id, "got": task.input}


LINEAR = {
    "name": "linear",
    "steps": [
        {"id": "a", "task": "t"},
        {"id": "b", "task": "t", "depends_on": ["a"]},
        {"id": "c", "task": "t", "depends_on": ["b"]},
    ],
}


def failed_linear() -> tuple[Sim, Flaky]:
    flaky = Flaky("b")
    sim = Sim(wf(LINEAR), flaky)
    state = sim.run("in")
    assert state.status == RUN_FAILED and state.step("b").status == FAILED
    return sim, flaky


def test_replaying_the_dead_letter_resumes_the_failed_run_at_its_failed_step():
    sim, flaky = failed_linear()
    [letter] = sim.of(DeadLetter)
    assert letter.task.step_id == "b" and letter.attempts == 1
    flaky.fixed = True
    sim.clock += 60
    sim.history.append(replayed("b", letter.attempts, sim.clock))
    sim.apply_all()
    state = sim.state
    assert state.status == RUN_RUNNING and state.error is None and state.ended_at is None
    assert state.reopened == 1 and abs(state.resumed_at - sim.clock) < 1e-5
    retry = sim.task_for("b")
    assert retry.payload.attempt == 2 and retry.payload.input == {"from": "a", "got": "in"}
    final = sim.drain()
    assert final.status == RUN_COMPLETED
    assert final.output == {"from": "c", "got": {"from": "b", "got": {"from": "a", "got": "in"}}}
    assert sim.completions == {"a": 1, "b": 1, "c": 1}
    ends = [e for e in sim.history if e.type in ev.RUN_TERMINAL_EVENTS]
    assert [e.type for e in ends] == [ev.WORKFLOW_FAILED, ev.WORKFLOW_COMPLETED]
    assert ends[0].msg_id == f"{RUN}.workflow.failed"  # unchanged for a run never reopened
    assert ends[1].msg_id == f"{RUN}.workflow.completed.1"
    # a restart folds the same history to the same state
    assert summary(sim.defn, replay(sim.defn, sim.history)) == summary(sim.defn, final)


def test_a_replay_that_does_not_apply_changes_nothing():
    sim, flaky = failed_linear()
    flaky.fixed = True
    sim.history.append(replayed("b", 1, sim.clock + 1))
    sim.drain()
    done = sim.state
    for stale in (replayed("b", 1, sim.clock + 2), replayed("a", 1, sim.clock + 2)):
        state, actions = advance(sim.defn, done, stale)
        assert actions == [] and state.status == RUN_COMPLETED
    state, actions = advance(sim.defn, done, replayed("nope", 1, sim.clock + 3))
    assert actions == [] and state.status == RUN_COMPLETED


def test_a_replayed_step_that_fails_again_dead_letters_again_and_fails_the_run():
    sim, _ = failed_linear()  # not fixed
    sim.history.append(replayed("b", 1, sim.clock + 1))
    final = sim.drain()
    assert final.status == RUN_FAILED and final.reopened == 1
    assert [d.attempts for d in sim.of(DeadLetter)] == [1, 2]
    fails = [e for e in sim.history if e.type == ev.WORKFLOW_FAILED]
    assert [e.msg_id for e in fails] == [f"{RUN}.workflow.failed", f"{RUN}.workflow.failed.1"]


def test_steps_cancelled_in_flight_by_the_failure_run_again_after_a_replay():
    defn = wf(
        {
            "name": "fan",
            "steps": [
                {"id": "a", "task": "t"},
                {"id": "b", "task": "t", "depends_on": ["a"]},
                {"id": "c", "task": "t", "depends_on": ["a"]},
                {"id": "d", "task": "t", "depends_on": ["b", "c"]},
            ],
        }
    )
    flaky = Flaky("b")
    sim = Sim(defn, flaky)
    sim.begin(1)
    sim.apply_all()
    sim.work_step("a")
    sim.work_step("b")  # fails for good while c is still queued
    assert sim.state.status == RUN_FAILED and sim.state.step("c").status == "cancelled"
    sim.work_step("c")  # its late result is ignored
    assert sim.state.step("c").status == "cancelled"
    flaky.fixed = True
    sim.history.append(replayed("b", 1, sim.clock + 1))
    sim.apply_all()
    assert sorted((t.payload.step_id, t.payload.attempt) for t in sim.pending()) == [
        ("b", 2),
        ("c", 2),
    ]
    final = sim.drain()
    assert final.status == RUN_COMPLETED and set(final.output) == {"from", "got"}
    assert final.step("d").status == COMPLETED


def test_a_replayed_map_item_resumes_the_map_and_keeps_the_other_outputs():
    defn = wf(copy.deepcopy(MAP_WF))
    flaky = Flaky("m", match=3)
    sim = Sim(defn, flaky)
    sim.begin([1, 2, 3, 4])
    sim.apply_all()
    sim.work_step("items")
    sim.work_step("m", 0)
    sim.work_step("m", 2)  # item 3 fails for good
    state = sim.state
    assert state.status == RUN_FAILED and state.error == "step 'm' failed: item 2: bad input"
    flaky.fixed = True
    sim.history.append(replayed("m", 1, sim.clock + 1, map_index=2))
    sim.apply_all()
    assert sim.state.step("m").status == QUEUED
    again = sorted((t.payload.map_index, t.payload.attempt) for t in sim.pending("m"))
    # the failed item and those in flight when it failed (their results were ignored)
    assert (1, 2) in again and (2, 2) in again and (3, 2) in again
    final = sim.drain()
    assert final.status == RUN_COMPLETED
    outputs = replay(defn, sim.history).step("m").output
    assert [o["got"] for o in outputs] == [1, 2, 3, 4]


def test_the_timeout_of_a_replayed_run_counts_from_the_replay():
    defn = wf({**copy.deepcopy(LINEAR), "timeout": "10s"})
    flaky = Flaky("b")
    sim = Sim(defn, flaky)
    sim.begin("in")
    sim.apply_all()
    sim.work_step("a")
    sim.work_step("b")
    assert sim.state.status == RUN_FAILED
    at = T0 + 100
    _, actions = advance(defn, sim.state, replayed("b", 1, at))
    assert SetTimer(at + 10, "run_timeout", seqno=1) in timers(actions)
    reopened, _ = advance(defn, sim.state, replayed("b", 1, at))
    old = Timer(T0 + 10, "run_timeout", RUN)  # the first deadline, fired late
    state, actions = advance(defn, reopened, old)
    assert actions == [] and state.status == RUN_RUNNING
    state, actions = advance(defn, reopened, Timer(at + 10, "run_timeout", RUN, seqno=1))
    [timeout] = publishes(actions)
    assert timeout.type == ev.WORKFLOW_FAILED and timeout.msg_id == f"{RUN}.workflow.failed.1"
    resumed = [a for a in resume(defn, reopened) if isinstance(a, SetTimer)]
    assert SetTimer(at + 10, "run_timeout", seqno=1) in resumed


def test_a_failed_run_keeps_step_inputs_for_a_replay_after_a_restart():
    sim, flaky = failed_linear()
    state = replay(sim.defn, sim.history)  # what a restarted orchestrator holds
    flaky.fixed = True
    state, actions = advance(sim.defn, state, replayed("b", 1, sim.clock + 5))
    [dispatch] = [a for a in actions if isinstance(a, Dispatch)]
    assert dispatch.task.input == {"from": "a", "got": "in"} and dispatch.task.attempt == 2


def test_a_sticky_run_binds_the_worker_of_its_first_completed_step():
    defn = wf({**copy.deepcopy(LINEAR), "sticky": "soft"})
    plain = wf(copy.deepcopy(LINEAR))
    for d, expected in ((defn, "w7"), (plain, "")):
        payload = {"workflow": d.name, "version": "1", "def_hash": "h", "input": 1}
        state, _ = start(d, Event(ev.WORKFLOW_STARTED, RUN, format_time(T0), payload=payload))
        done = ev_at(ev.STEP_COMPLETED, "a", T0 + 1, {"output": 2}, attempt=1)
        done.worker_id = "w7"
        state, _ = advance(d, state, done)
        later = ev_at(ev.STEP_COMPLETED, "b", T0 + 2, {"output": 3}, attempt=1)
        later.worker_id = "w8"
        state, _ = advance(d, state, later)
        assert state.bound_worker == expected
