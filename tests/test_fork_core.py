"""Forking a run, the pure part (``dag.fork``, ``Fold.on_fork``): which steps a fork reuses,
and a fork's start and replay, without NATS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagnats_nb.dag import load_workflow
from dagnats_nb.dag.advance import advance, replay, resume
from dagnats_nb.dag.events import STEP_COMPLETED, WORKFLOW_STARTED, Event, format_time
from dagnats_nb.dag.fold import Fold
from dagnats_nb.dag.fork import downstream, plan_fork, rerun_seeds
from dagnats_nb.dag.state import (
    COMPLETED,
    FAILED,
    QUEUED,
    SKIPPED,
    Dispatch,
    Publish,
    RunState,
    StepState,
)
from dagnats_nb.errors import RunError

T0 = 1_700_000_000.0


def wf(name: str, *edges: tuple[str, list[str]], **extra) -> object:
    steps = [{"id": sid, "task": sid, "depends_on": deps} for sid, deps in edges]
    return load_workflow({"name": name, "steps": steps, **extra})


CHAIN = wf("chain", ("a", []), ("b", ["a"]), ("c", ["b"]), ("d", ["c"]))
DIAMOND = wf("diamond", ("top", []), ("l", ["top"]), ("r", ["top"]), ("join", ["l", "r"]))


def ran(defn, statuses: dict[str, str] | None = None, input=None) -> RunState:
    """A source run of ``defn``: every step completed with output ``out-{id}``, but for
    the statuses given."""
    state = RunState("src", defn.name, defn.version, "h", input, T0)
    statuses = statuses or {}
    for s in defn.steps:
        status = statuses.get(s.id, COMPLETED)
        out = f"out-{s.id}" if status == COMPLETED else None
        state.steps[s.id] = StepState(status=status, output=out)
    return state


def test_a_chain_reuses_the_steps_before_the_fork_point():
    fork = plan_fork(CHAIN, ran(CHAIN), CHAIN, "c")
    assert fork.reused == {"a": "out-a", "b": "out-b"}
    assert fork.runs == ("c", "d") and fork.changed == ()
    assert list(plan_fork(CHAIN, ran(CHAIN), CHAIN, "a").reused) == []


def test_a_diamond_reuses_the_other_branch():
    fork = plan_fork(DIAMOND, ran(DIAMOND), DIAMOND, "l")
    assert fork.reused == {"top": "out-top", "r": "out-r"} and fork.runs == ("l", "join")


def test_steps_that_did_not_complete_run_again():
    state = ran(CHAIN, {"b": FAILED, "c": "pending", "d": "pending"})
    assert plan_fork(CHAIN, state, CHAIN, "d").reused == {"a": "out-a"}
    assert plan_fork(CHAIN, state, CHAIN, "b").runs == ("b", "c", "d")


def test_a_changed_step_and_what_follows_it_run_again():
    edited = load_workflow({**CHAIN.to_dict(), "version": "2"})
    assert plan_fork(CHAIN, ran(CHAIN), edited, "d").reused.keys() == {"a", "b", "c"}
    raw = CHAIN.to_dict()
    raw["steps"][1]["timeout"] = 5_000_000_000  # step b: any field of its definition
    raw["steps"].append({"id": "e", "task": "e", "depends_on": ["a"]})
    edited = load_workflow(raw)
    fork = plan_fork(CHAIN, ran(CHAIN), edited, "d")
    assert fork.reused == {"a": "out-a"} and fork.changed == ("b", "e")
    assert set(fork.runs) == {"b", "c", "d", "e"}


def test_a_new_input_reruns_every_step():
    fork = plan_fork(DIAMOND, ran(DIAMOND), DIAMOND, "join", new_input=True)
    assert fork.reused == {} and len(fork.runs) == 4


def test_a_map_step_is_reused_or_run_whole():
    maps = load_workflow(
        {
            "name": "m",
            "steps": [
                {"id": "items", "task": "items"},
                {"id": "sq", "task": "sq", "type": "map", "depends_on": ["items"]},
                {"id": "total", "task": "total", "depends_on": ["sq"]},
            ],
        }
    )
    state = ran(maps)
    state.steps["sq"].output = [0, 1, 4]
    assert plan_fork(maps, state, maps, "sq").reused == {"items": "out-items"}
    assert plan_fork(maps, state, maps, "total").reused == {"items": "out-items", "sq": [0, 1, 4]}


def test_a_skipped_step_is_decided_again_and_planners_and_handlers_never_reused():
    defn = load_workflow(
        {
            "name": "mixed",
            "steps": [
                {"id": "a", "task": "a", "on_failure": "h"},
                {
                    "id": "s",
                    "task": "s",
                    "depends_on": ["a"],
                    "skip_if": {"step_id": "a", "field": "x", "op": "==", "value": 1},
                },
                {"id": "after", "task": "t", "depends_on": ["s"]},
                {"id": "p", "task": "plan", "type": "planner"},
                {"id": "q", "task": "q", "depends_on": ["p"]},
                {"id": "h", "task": "h"},
            ],
        }
    )
    state = ran(defn, {"s": SKIPPED})
    fork = plan_fork(defn, state, defn, "after")
    assert fork.reused == {"a": "out-a"}  # s is skipped again by its rule; p is planned anew
    assert set(fork.runs) == {"s", "after", "p", "q"}  # h: a handler runs only on failure
    assert plan_fork(defn, state, defn, "q").reused.keys() == {"a", "after"}


def test_a_bad_step_is_one_line_naming_the_steps():
    with pytest.raises(RunError) as info:
        plan_fork(CHAIN, ran(CHAIN), CHAIN, "zz")
    assert str(info.value) == (
        "cannot fork run src from step 'zz': workflow 'chain' has no such step "
        "(its steps: a, b, c, d); name one of them"
    )
    handled = load_workflow(
        {
            "name": "h",
            "steps": [{"id": "a", "task": "a", "compensate": "undo"}, {"id": "undo", "task": "u"}],
        }
    )
    with pytest.raises(RunError, match=r"fork from the step it handles \('a'\)"):
        plan_fork(handled, ran(handled), handled, "undo")


@st.composite
def dags(draw):
    n = draw(st.integers(1, 8))
    edges = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True)) if i else []
        edges.append((f"s{i}", [f"s{d}" for d in deps]))
    defn = wf("random", *edges)
    statuses = {
        s.id: draw(st.sampled_from([COMPLETED, COMPLETED, FAILED, "pending"])) for s in defn.steps
    }
    return defn, statuses, draw(st.sampled_from(defn.step_ids))


@given(dags())
def test_a_fork_never_reuses_the_fork_point_or_what_depends_on_it(case):
    defn, statuses, from_step = case
    state = ran(defn, statuses)
    fork = plan_fork(defn, state, defn, from_step)
    assert not set(fork.reused) & downstream(defn, {from_step})
    assert set(fork.reused) | set(fork.runs) == set(defn.step_ids)
    for sid in fork.reused:
        assert statuses[sid] == COMPLETED
        assert all(d in fork.reused for d in defn.step(sid).depends_on)
    # every completed step outside the fork point's downstream whose deps are kept is kept
    for sid in defn.topological_order:
        deps_kept = all(d in fork.reused for d in defn.step(sid).depends_on)
        outside = sid not in downstream(defn, {from_step})
        assert (sid in fork.reused) == (outside and statuses[sid] == COMPLETED and deps_kept)


def started(defn, payload_extra: dict, run_id: str = "fork", input=None) -> Event:
    payload = {"workflow_def": defn.to_dict(), "input": input, "def_hash": "h", **payload_extra}
    return Event(WORKFLOW_STARTED, run_id, format_time(T0), payload=payload)


FORKED = {
    "forked_from": {"run_id": "src", "step_id": "c", "def_hash": "h"},
    "reused": {"a": {"n": 1}, "b": {"n": 2}},
}


def test_on_fork_completes_the_reused_steps_before_scheduling():
    state = RunState("fork", "chain", "1.0", "h", None, T0)
    tx = Fold(CHAIN, state, T0)
    tx.on_fork(started(CHAIN, FORKED).payload)
    tx.schedule()
    s = tx.state
    assert s.forked_from == "src" and s.fork_step == "c" and s.reused == {"a", "b"}
    assert [s.steps[x].status for x in "abc"] == [COMPLETED, COMPLETED, QUEUED]
    assert s.steps["b"].output == {"n": 2}
    published = [a.event for a in tx.actions if isinstance(a, Publish)]
    assert [(e.type, e.step_id, e.payload) for e in published] == [
        (STEP_COMPLETED, "a", {"n": 1}),
        (STEP_COMPLETED, "b", {"n": 2}),
    ]
    dispatched = [a.task for a in tx.actions if isinstance(a, Dispatch)]
    assert [(t.step_id, t.input) for t in dispatched] == [("c", {"n": 2})]


def test_on_fork_leaves_a_run_that_is_no_fork_alone():
    for payload in ({"workflow_def": {}, "input": 1}, None, "text", {"reused": []}):
        tx = Fold(CHAIN, RunState("r", "chain", "1.0", "h", None, T0), T0)
        tx.on_fork(payload)
        assert tx.state.steps == {} and tx.actions == [] and tx.state.reused == frozenset()


def test_replay_of_a_fork_keeps_its_reused_outputs():
    """``advance.start`` calls ``on_fork``: a fork replays to the same state, and the
    ``step.completed`` of a reused step it wrote comes back as a duplicate."""
    first = started(CHAIN, FORKED)
    state = replay(CHAIN, [first])
    assert state.reused == {"a", "b"} and state.step("b").output == {"n": 2}
    assert {e.msg_id for e, _ in state.outbox.values()} >= {
        "fork.a.step.completed",
        "fork.b.step.completed",
    }
    assert any(isinstance(a, Publish) for a in resume(CHAIN, state))  # sent again if lost
    back = Event(STEP_COMPLETED, "fork", format_time(T0 + 1), step_id="a", payload={"n": 1})
    after, actions = advance(CHAIN, state, back)
    assert "fork.a.step.completed" not in {e.msg_id for e, _ in after.outbox.values()}
    assert actions == [] and after.step("c").status == QUEUED


def test_a_rerun_starts_from_the_changed_steps_in_run_order():
    raw = CHAIN.to_dict()
    raw["steps"][2]["timeout"] = 5_000_000_000  # step c's definition
    edited = load_workflow(raw)
    assert rerun_seeds(CHAIN, edited, {}, {}) == ("c",)
    assert rerun_seeds(CHAIN, CHAIN, {}, {}) == ()
    # b's handler is another version now; d's has no recorded version (a Go worker's)
    ran_with = {"a": "v1", "b": "v1", "c": "v1"}
    serving = {"a": "v1", "b": "v2", "d": "v9"}
    assert rerun_seeds(CHAIN, edited, ran_with, serving) == ("b", "c")
    fork = plan_fork(CHAIN, ran(CHAIN), edited, "b", also=("c",))
    assert fork.reused == {"a": "out-a"} and fork.runs == ("b", "c", "d")


def test_a_changed_failure_handler_reruns_the_step_it_handles():
    raw = {
        "name": "h",
        "steps": [
            {"id": "a", "task": "a"},
            {"id": "b", "task": "b", "depends_on": ["a"], "on_failure": "fix"},
            {"id": "fix", "task": "fix"},
        ],
    }
    source = load_workflow(raw)
    raw["steps"][2]["metadata"] = {"note": "edited"}
    assert rerun_seeds(source, load_workflow(raw), {}, {}) == ("b",)


def test_a_run_keeps_the_handler_version_of_each_completed_step():
    """What ``rerun`` compares with today's handlers: the fold keeps the version the last
    completed result of each step recorded (none from a Go worker), without touching the
    dict an earlier state (a clone) holds."""
    state = replay(CHAIN, [started(CHAIN, {}, run_id="v")])
    done = [
        Event(STEP_COMPLETED, "v", format_time(T0 + 1), step_id="a", payload=1),
        Event(STEP_COMPLETED, "v", format_time(T0 + 2), step_id="b", payload=2),
    ]
    done[0].handler_version = "1111"
    state, _ = advance(CHAIN, state, done[0])
    before = state.versions
    state, _ = advance(CHAIN, state, done[1])  # a Go worker's: no version
    assert state.versions == {"a": "1111"} and state.versions is before
    again = Event(STEP_COMPLETED, "v", format_time(T0 + 3), step_id="c", payload=3)
    again.handler_version = "2222"
    after, _ = advance(CHAIN, state, again)
    assert after.versions == {"a": "1111", "c": "2222"} and before == {"a": "1111"}
