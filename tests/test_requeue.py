"""A restarted engine sends again the tasks of queued steps that no queue holds (refused by
a full disk just before the stop), and its workers do not run a task whose step's result
is in already (a server restarted after a full disk forgets acknowledgements and delivers
such tasks again). The chaos suite (tests/chaos/test_chaos_store.py) meets both on a real
full disk; here the queue is edited by hand."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.dag.state import Instance, MapState, RunState, StepState, result_applied
from dagnats_nb.wire import protocol

FLOW = {"name": "lost", "steps": [{"id": "a", "task": "t"}]}


def queued(eng, run_id: str) -> bool:
    state = eng.run_state(run_id)
    return state is not None and state["state"].step("a").status == "queued"


def test_a_lost_task_is_sent_again_and_a_done_one_is_not_run(tmp_path):
    data = tmp_path / "e"
    opts = dict(llm_enabled=False, ack_wait="2s")
    eng = dn.Engine.start(data_dir=data, **opts)
    try:
        eng.register(FLOW)
        with pytest.warns(dn.UnservedTaskWarning):
            lost, kept, crowded = (eng.start_run("lost", n).id for n in (1, 2, 3))
        until(lambda: all(queued(eng, r) for r in (lost, kept, crowded)), what="three queued")

        async def edit() -> None:
            js = eng._js
            for run_id in (lost, crowded):  # as a task the server refused leaves it: gone
                msg = await js.get_last_msg(protocol.TASK_STREAM, f"task.t.{run_id}")
                await js.delete_msg(protocol.TASK_STREAM, msg.seq)
            # The subject of `crowded` still holds a message, not its step's task (an
            # acknowledged task a full disk brought back): counting would miss the loss.
            stale = {"run_id": crowded, "step_id": "zz", "task": "t", "input": 0}
            await js.publish(f"task.t.{crowded}", json.dumps(stale).encode())

        eng._call(edit())
    finally:
        eng.stop()

    calls: Counter = Counter()
    lock = threading.Lock()

    def t(ctx):
        with lock:
            calls[(ctx.run_id, ctx.step_id)] += 1
        return ctx.input * 10

    with dn.Engine.start(data_dir=data, handlers={"t": t}, **opts) as eng:
        for run_id, n in ((lost, 1), (kept, 2), (crowded, 3)):
            assert eng.get_run(run_id).wait(20).output == n * 10
        assert eng.orchestrator.counters["tasks_requeued"] == 2
        assert calls == {(lost, "a"): 1, (kept, "a"): 1, (crowded, "a"): 1}
        until(lambda: eng.workers["t"].stale == 1, what="the stale task dropped")

        # A copy of a task whose result is in: acknowledged, not run.
        copy = {"run_id": kept, "step_id": "a", "task": "t", "input": 2}
        eng._call(eng._js.publish(f"task.t.{kept}", json.dumps(copy).encode()))
        until(lambda: eng.workers["t"].stale == 2, what="the copy dropped")
        assert calls[(kept, "a")] == 1
        lag = eng.consumer_lag().set_index("consumer").loc["workers-t"]
        assert lag["pending"] == 0 and lag["ack_pending"] == 0


def _state(status: str, attempt: int, **map_state) -> RunState:
    st = StepState(status=status, attempt=attempt)
    if map_state:
        st.map = MapState(count=4, outputs=[None] * 4, **map_state)
    state = RunState("r", "w", "1", "", None, 0.0)
    state.steps["a"] = st
    return state


@pytest.mark.parametrize(
    ("state", "attempt", "index", "past"),
    [
        (_state("retrying", 1), 2, None, False),  # the retry's step.queued is on its way
        (_state("retrying", 1), 1, None, True),  # the failed attempt came again
        (_state("queued", 2), 2, None, False),
        (_state("running", 2), 2, None, False),
        (_state("completed", 2), 2, None, True),
        (_state("queued", 3), 2, None, True),  # a later attempt exists
        (_state("running", 1, next_index=2, active={1: Instance("retrying", 1)}), 2, 1, False),
        (_state("running", 1, next_index=2, active={1: Instance("retrying", 1)}), 1, 1, True),
        (_state("running", 1, next_index=2, active={1: Instance("queued", 1)}), 1, 1, False),
        (_state("running", 1, next_index=2, active={}), 1, 0, True),  # item 0 finished
        (_state("running", 1, next_index=2, active={}), 1, 3, False),  # item 3 not sent yet
        (_state("pending", 0), 1, None, True),  # no task of the step was sent: garbage
    ],
)
def test_a_task_is_past_only_once_the_run_has_moved_beyond_its_attempt(state, attempt, index, past):
    task = protocol.TaskPayload("r", "a", "t", None, "w", attempt=attempt, map_index=index)
    assert result_applied(state, task) is past


def test_retries_of_in_kernel_workers_are_never_taken_for_delivered_again(tmp_path):
    """A retry's task can reach a worker of the same process before the orchestrator applies
    its step.queued: it must run (a skipped one left the run waiting for ever). The race is
    narrow (the parametrized test above pins the rule); this checks the whole path."""
    calls: Counter = Counter()

    def flaky(ctx):
        calls[(ctx.run_id, ctx.attempt)] += 1
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.input

    flow = {
        "name": "flaky",
        "steps": [
            {"id": "one", "task": "flaky"},
            {"id": "many", "task": "flaky", "type": "map", "depends_on": ["one"]},
        ],
        "default_retry": {"max_attempts": 3, "strategy": "fixed", "initial_delay": "1ms"},
    }
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False) as eng:
        eng.add_handler("flaky", flaky, concurrency=16)
        eng.register(flow)
        runs = [eng.start_run("flaky", [1, 2, 3, 4]) for _ in range(20)]
        assert all(r.wait(30).status == "completed" for r in runs)
        assert sum(w.stale for w in eng.workers.values()) == 0
