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
