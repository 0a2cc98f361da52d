"""The pure core (``dag.advance``) without NATS: an in-memory history, worker and timers.

The simulator plays the orchestrator's part (orchestrator.py): events are applied in stream
order, ``Dispatch`` stores a task and then its ``step.queued`` event, ``Publish`` stores an
event, ``SetTimer`` registers a timer that later calls ``advance`` with a ``Timer``. A fake
worker turns a task into ``step.started`` plus a result event, as workers.py does. Time is a
fake clock; every event carries it as an RFC 3339 timestamp.
"""

from __future__ import annotations

import copy
import json
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.dag import events as ev
from dagnats_nb.dag.advance import advance, replay, resolve_input, resume, run_output, start
from dagnats_nb.dag.events import Event, TaskPayload, format_time
from dagnats_nb.dag.state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    QUEUED,
    RETRYING,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUNNING,
    SKIPPED,
    WAITING,
    Action,
    DeadLetter,
    Dispatch,
    Publish,
    RunEnded,
    RunState,
    SetTimer,
    Timer,
)

T0 = 1_700_000_000.0
RUN = "r1"
TICK = 0.001  # the fake clock's step between two worker events


# -- worker outcomes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fail:
    kind: str = ev.RETRIABLE
    error: str = "boom"
    retry_after_ms: int | None = None


@dataclass(frozen=True)
class Cont:
    """An agent loop's ``Continue(output)``."""

    output: Any


Script = Callable[[TaskPayload], Any]  # returns an output, a Cont, or a Fail


def echo(task: TaskPayload) -> Any:
    return task.input


# -- the simulator -----------------------------------------------------------------------------


@dataclass
class SimTask:
    payload: TaskPayload
    stored_at: int  # len(history) when the task was stored (before its queued event)
    status: str = "pending"  # pending | running | done
    acked_at: int | None = None


def wf(data: dict[str, Any]) -> WorkflowDef:
    return load_workflow(data)


def started_event(defn: WorkflowDef, value: Any = None, at: float = T0) -> Event:
    payload = {"workflow_def": defn.to_dict(), "input": value, "def_hash": "h"}
    return Event(ev.WORKFLOW_STARTED, RUN, timestamp=format_time(at), payload=payload)


def worker_event(task: TaskPayload, kind: str, payload: Any, at: float) -> Event:
    """The event a worker publishes for ``task`` (workers.py ``task_event``)."""
    return Event(
        type=kind,
        run_id=task.run_id,
        timestamp=format_time(at),
        step_id=task.step_id,
        payload=payload,
        worker_id="w1",
        attempt_number=task.attempt,
        map_index=task.map_index,
        iteration=task.iteration,
    )


def result_event(task: TaskPayload, result: Any, at: float) -> Event:
    if isinstance(result, Fail):
        payload: dict[str, Any] = {"error": result.error, "failure_type": result.kind}
        if result.retry_after_ms is not None:
            payload["retry_after_ms"] = result.retry_after_ms
        return worker_event(task, ev.STEP_FAILED, payload, at)
    if isinstance(result, Cont):
        return worker_event(task, ev.STEP_CONTINUE, result.output, at)
    return worker_event(task, ev.STEP_COMPLETED, result, at)


def active_steps(defn: WorkflowDef, state: RunState) -> int:
    """Tasks a run has in flight (queued or running), handler steps excluded."""
    handlers = set(defn.handler_steps)
    n = 0
    for sid, stp in state.steps.items():
        if sid in handlers:
            continue
        if stp.map is not None:
            n += sum(1 for i in stp.map.active.values() if i.status in (QUEUED, RUNNING))
        elif stp.status in (QUEUED, RUNNING):
            n += 1
    return n


class Sim:
    """History (the stream), the orchestrator's loop, a worker and timers, all in memory."""

    def __init__(
        self,
        defn: WorkflowDef,
        script: dict[str, Script] | Script | None = None,
        *,
        lag: bool = False,
        check_purity: bool = False,
        dedup_window: bool = False,
    ) -> None:
        self.defn = defn
        self.script = script if script is not None else echo
        self.lag = lag  # core-published events wait in `outgoing` until flushed
        # TASK_QUEUES drops a task whose msg id it stored before (within its window);
        # without it, only a copy still waiting for a worker absorbs the duplicate.
        self.dedup_window = dedup_window
        self.stored_ids: set[str] = set()
        self.check_purity = check_purity
        self.clock = T0
        self.history: list[Event] = []
        self.applied = 0
        self.state: RunState | None = None
        self.tasks: list[SimTask] = []
        self.timers: list[SetTimer] = []
        self.outgoing: list[Event] = []
        self.actions: list[Action] = []
        self.dispatched: Counter[str] = Counter()  # task msg id -> Dispatch actions
        self.completions: Counter[str] = Counter()  # step -> transitions to completed
        self.max_active = 0
        self.purity_checks = 0

    # -- the core ---------------------------------------------------------------------------

    def begin(self, value: Any = None) -> None:
        self.history.append(started_event(self.defn, value, self.clock))

    def _advance(self, item: Event | Timer) -> list[Action]:
        old = self.state
        if old is None:
            assert isinstance(item, Event)
            if item.type != ev.WORKFLOW_STARTED:
                return []
            new, actions = start(self.defn, item)
        else:
            before = copy.deepcopy(old) if self.check_purity else None
            new, actions = advance(self.defn, old, item)
            if before is not None:
                assert old == before, f"advance mutated its input state on {item}"
                self.purity_checks += 1
            for sid, stp in new.steps.items():
                if stp.status == COMPLETED and old.step(sid).status != COMPLETED:
                    self.completions[sid] += 1
        if new.terminal:  # a finished run dispatches nothing
            assert not any(isinstance(a, Dispatch) for a in actions), actions
        self.state = new
        self.max_active = max(self.max_active, active_steps(self.defn, new))
        self.perform(actions)
        return actions

    def perform(self, actions: list[Action]) -> None:
        for a in actions:
            self.actions.append(a)
            if isinstance(a, Dispatch):
                self.dispatched[a.task.msg_id] += 1
                self.store_task(a.task)
                self.emit(a.queued)
            elif isinstance(a, Publish):
                self.emit(a.event)
            elif isinstance(a, SetTimer) and a not in self.timers:  # keyed as the shell does
                self.timers.append(a)

    def store_task(self, task: TaskPayload) -> None:
        if self.dedup_window and task.msg_id in self.stored_ids:
            return
        if any(t.payload.msg_id == task.msg_id and t.status != "done" for t in self.tasks):
            return
        self.stored_ids.add(task.msg_id)
        self.tasks.append(SimTask(task, len(self.history)))

    def emit(self, event: Event) -> None:
        if self.lag:
            self.outgoing.append(event)
        else:
            self.history.append(event)

    def apply_next(self) -> list[Action]:
        event = self.history[self.applied]
        self.applied += 1
        return self._advance(event)

    def apply_all(self) -> None:
        while self.applied < len(self.history) or self.outgoing:
            if self.applied < len(self.history):
                self.apply_next()
            else:
                self.flush()

    def flush(self, i: int = 0) -> None:
        self.history.append(self.outgoing.pop(i))

    def fire(self, timer: SetTimer) -> list[Action]:
        self.timers.remove(timer)
        self.clock = max(self.clock, timer.at)
        fired = Timer(self.clock, timer.kind, RUN, timer.step_id, timer.map_index, timer.seqno)
        return self._advance(fired)

    # -- the worker -------------------------------------------------------------------------

    def pending(self, step_id: str | None = None) -> list[SimTask]:
        return [
            t
            for t in self.tasks
            if t.status == "pending" and (step_id is None or t.payload.step_id == step_id)
        ]

    def task_for(self, step_id: str, map_index: int | None = None) -> SimTask:
        found = [t for t in self.pending(step_id) if t.payload.map_index == map_index]
        assert found, f"no pending task for {step_id}[{map_index}]"
        return found[0]

    def outcome(self, task: TaskPayload) -> Any:
        script = self.script
        fn = script.get(task.step_id, echo) if isinstance(script, dict) else script
        return fn(task)

    def start_task(self, t: SimTask) -> None:
        self.clock += TICK
        t.status = "running"
        self.history.append(worker_event(t.payload, ev.STEP_STARTED, None, self.clock))

    def finish_task(self, t: SimTask, *, duplicate: bool = False, redeliver: bool = False) -> None:
        self.clock += TICK
        event = result_event(t.payload, self.outcome(t.payload), self.clock)
        self.history.append(event)
        if duplicate:  # delivered again after the stream's duplicate window
            self.history.append(copy.deepcopy(event))
        if redeliver:  # the ack was lost: the task runs again
            t.status = "pending"
        else:
            t.status, t.acked_at = "done", len(self.history)

    def work(self, t: SimTask) -> None:
        self.start_task(t)
        self.finish_task(t)
        self.apply_all()

    def work_step(self, step_id: str, map_index: int | None = None) -> None:
        self.work(self.task_for(step_id, map_index))

    def drain(self, max_moves: int = 10_000) -> RunState:
        """Apply everything, then run tasks first-in-first-out, then fire the earliest timer."""
        for _ in range(max_moves):
            self.apply_all()
            assert self.state is not None
            if self.state.terminal:
                return self.state
            if self.pending():
                self.work(self.pending()[0])
            elif self.timers:
                self.fire(min(self.timers, key=lambda t: t.at))
            else:
                raise AssertionError(f"run stuck: {self.state}")
        raise AssertionError("run did not finish")

    def run(self, value: Any = None) -> RunState:
        self.begin(value)
        return self.drain()

    # -- looking at it ----------------------------------------------------------------------

    def events(self, type_: str, step_id: str | None = None) -> list[Event]:
        return [
            e for e in self.history if e.type == type_ and (step_id is None or e.step_id == step_id)
        ]

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def inputs(self, step_id: str) -> list[Any]:
        return [t.payload.input for t in self.tasks if t.payload.step_id == step_id]


def dispatches(actions: list[Action]) -> list[Dispatch]:
    return [a for a in actions if isinstance(a, Dispatch)]


def publishes(actions: list[Action]) -> list[Event]:
    return [a.event for a in actions if isinstance(a, Publish)]


def timers(actions: list[Action]) -> list[SetTimer]:
    return [a for a in actions if isinstance(a, SetTimer)]


def summary(defn: WorkflowDef, state: RunState) -> dict[str, Any]:
    """What replay must reproduce: run status/output and each step's status, output, attempt."""
    steps: dict[str, Any] = {}
    for sid in defn.step_ids:
        stp = state.step(sid)
        row: dict[str, Any] = {
            "status": stp.status,
            "output": stp.output,
            "attempt": stp.attempt,
            "iteration": stp.iteration,
        }
        if stp.map is not None:
            row["map"] = (stp.map.outputs, stp.map.done, stp.map.next_index)
        steps[sid] = row
    return {
        "status": state.status,
        "output": state.output,
        "error": state.error,
        "steps": steps,
        "outbox": sorted(state.outbox),
    }


def ev_at(
    type_: str,
    step_id: str,
    at: float,
    payload: Any = None,
    attempt: int = 1,
    iteration: int | None = None,
) -> Event:
    return Event(
        type_,
        RUN,
        timestamp=format_time(at),
        step_id=step_id,
        payload=payload,
        worker_id="w1",
        attempt_number=attempt,
        iteration=iteration,
    )


# -- 1. shape of a run: linear, fan-out/fan-in, outputs, handlers -------------------------------


def test_linear_run_dispatches_one_step_at_a_time_and_outputs_the_last():
    defn = wf(
        {
            "name": "linear",
            "steps": [
                {"id": "a", "task": "ta"},
                {"id": "b", "task": "tb", "depends_on": ["a"]},
                {"id": "c", "task": "tc", "depends_on": ["b"]},
            ],
        }
    )
    state, actions = start(defn, started_event(defn, {"n": 1}))
    assert state.status == "running" and state.input == {"n": 1} and state.started_at == T0
    [d] = dispatches(actions)
    assert actions == [d]
    assert d.task == TaskPayload(
        run_id=RUN,
        step_id="a",
        task="ta",
        input={"n": 1},
        workflow_name="linear",
        attempt=1,
        def_hash="h",
    )
    assert d.queued.type == ev.STEP_QUEUED and d.queued.step_id == "a"
    assert d.queued.attempt_number == 1 and d.queued.msg_id == f"{RUN}.a.step.queued.1"
    assert state.step("a").status == QUEUED and state.step("b").status == PENDING
    assert list(state.outbox) == [d.queued.msg_id]

    state, actions = advance(defn, state, d.queued)
    assert actions == [] and state.outbox == {}
    state, actions = advance(defn, state, ev_at(ev.STEP_STARTED, "a", T0 + 1))
    assert actions == [] and state.step("a").status == RUNNING
    state, actions = advance(defn, state, ev_at(ev.STEP_COMPLETED, "a", T0 + 2, {"n": 2}))
    [d] = dispatches(actions)
    assert d.task.step_id == "b" and d.task.input == {"n": 2}
    assert state.step("a").status == COMPLETED and state.step("a").output == {"n": 2}

    sim = Sim(defn, {"a": lambda t: t.input["n"] + 1, "b": lambda t: t.input * 10, "c": echo})
    final = sim.run({"n": 1})
    assert final.status == RUN_COMPLETED and final.output == 20 and final.error is None
    assert sim.inputs("a") == [{"n": 1}] and sim.inputs("b") == [2] and sim.inputs("c") == [20]
    [done] = sim.events(ev.WORKFLOW_COMPLETED)
    assert done.payload == {"output": 20}
    assert sim.of(RunEnded) == [RunEnded(RUN_COMPLETED)]
    assert [e.type for e in sim.history if e.step_id == "b"] == [
        ev.STEP_QUEUED,
        ev.STEP_STARTED,
        ev.STEP_COMPLETED,
    ]


def test_fan_out_fan_in_resolves_inputs_and_several_terminals_form_the_output():
    defn = wf(
        {
            "name": "diamond",
            "steps": [
                {"id": "a", "task": "t"},
                {"id": "b", "task": "t", "depends_on": ["a"]},
                {"id": "c", "task": "t", "depends_on": ["a"]},
                {"id": "d", "task": "t", "depends_on": ["b", "c"]},
                {"id": "e", "task": "t", "depends_on": ["c"]},
                {"id": "r", "task": "t"},
            ],
        }
    )
    state, actions = start(defn, started_event(defn, "in"))
    assert [d.task.step_id for d in dispatches(actions)] == ["a", "r"]
    assert [d.task.input for d in dispatches(actions)] == ["in", "in"]

    script = {
        "a": lambda t: {"a": t.input},
        "b": lambda t: ["b", t.input],
        "c": lambda t: ["c", t.input],
        "d": echo,
        "e": lambda t: {"e": t.input},
        "r": lambda t: t.input + "!",
    }
    sim = Sim(defn, script)
    final = sim.run("in")
    a_out = {"a": "in"}
    assert sim.inputs("b") == [a_out] and sim.inputs("c") == [a_out]  # one dep: unchanged
    assert sim.inputs("d") == [{"b": ["b", a_out], "c": ["c", a_out]}]  # several: by id
    assert sim.inputs("e") == [["c", a_out]]
    assert final.output == {
        "d": {"b": ["b", a_out], "c": ["c", a_out]},
        "e": {"e": ["c", a_out]},
        "r": "in!",
    }
    assert resolve_input(defn, final, "a") == "in"
    assert resolve_input(defn, final, "e") == ["c", a_out]
    assert run_output(defn, final) == final.output


def test_handler_steps_are_never_scheduled_as_roots():
    defn = wf(
        {
            "name": "handlers",
            "steps": [
                {"id": "work", "task": "t", "on_failure": "alert", "compensate": "undo"},
                {"id": "alert", "task": "alert"},
                {"id": "undo", "task": "undo"},
            ],
        }
    )
    state, actions = start(defn, started_event(defn, 1))
    assert [d.task.step_id for d in dispatches(actions)] == ["work"]
    sim = Sim(defn)
    final = sim.run(7)
    assert final.status == RUN_COMPLETED and final.output == 7  # the only terminal step
    assert final.step("alert").status == PENDING and final.step("undo").status == PENDING
    assert {t.payload.step_id for t in sim.tasks} == {"work"}


def test_on_failure_handler_gets_the_failure_and_the_run_fails_after_it():
    defn = wf(
        {
            "name": "rescue",
            "steps": [
                {"id": "work", "task": "t", "on_failure": "alert", "compensate": "undo"},
                {"id": "alert", "task": "alert"},
                {"id": "undo", "task": "undo"},
            ],
        }
    )
    sim = Sim(defn, {"work": lambda t: Fail(ev.NON_RETRIABLE, "nope"), "alert": lambda t: "sent"})
    final = sim.run({"k": 1})
    assert sim.inputs("alert") == [{"step_id": "work", "error": "nope", "input": {"k": 1}}]
    assert final.status == RUN_FAILED and final.error == "step 'work' failed: nope"
    assert final.step("alert").status == COMPLETED and final.step("alert").output == "sent"
    assert final.step("undo").status == PENDING
    [letter] = sim.of(DeadLetter)
    assert letter.error == "nope" and letter.attempts == 1 and letter.task.step_id == "work"
    [failed] = sim.events(ev.WORKFLOW_FAILED)
    assert failed.payload == {"error": "step 'work' failed: nope"}


def test_a_failing_on_failure_handler_names_both_failures():
    defn = wf(
        {
            "name": "rescue2",
            "steps": [
                {"id": "work", "task": "t", "on_failure": "alert"},
                {"id": "alert", "task": "a"},
            ],
        }
    )
    sim = Sim(defn, lambda t: Fail(ev.NON_RETRIABLE, f"{t.step_id} broke"))
    final = sim.run()
    assert final.status == RUN_FAILED
    assert final.error == (
        "step 'work' failed: work broke; on_failure step 'alert' failed: alert broke"
    )
    assert [d.task.step_id for d in sim.of(DeadLetter)] == ["work", "alert"]


# -- 2. retries --------------------------------------------------------------------------------


def one_step(policy: dict | None = None, **extra: Any) -> WorkflowDef:
    step: dict[str, Any] = {"id": "s", "task": "t"}
    if policy is not None:
        step["retry"] = policy
    return wf({"name": "one", "steps": [step], **extra})


def fail_then(n: int, value: Any = "ok", kind: str = ev.RETRIABLE) -> Script:
    return lambda t: Fail(kind, f"attempt {t.attempt}") if t.attempt <= n else value


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        ({"strategy": "fixed", "initial_delay": "100ms"}, [0.1, 0.1, 0.1]),
        ({"strategy": "linear", "initial_delay": "100ms"}, [0.1, 0.2, 0.3]),
        ({"strategy": "exponential", "initial_delay": "100ms", "multiplier": 3}, [0.1, 0.3, 0.9]),
        (
            {"strategy": "exponential", "initial_delay": "1s", "max_delay": "2500ms"},
            [1.0, 2.0, 2.5],
        ),
        ({"strategy": "linear", "initial_delay": "1s", "max_delay": "1500ms"}, [1.0, 1.5, 1.5]),
    ],
)
def test_retry_delays_land_exactly_in_the_timer(policy: dict, delays: list[float]):
    defn = one_step({"max_attempts": 3, **policy})
    sim = Sim(defn, fail_then(3))
    sim.begin("x")
    sim.apply_all()
    for attempt, delay in enumerate(delays, start=1):
        task = sim.task_for("s")
        assert task.payload.attempt == attempt and task.payload.input == "x"
        sim.start_task(task)
        sim.finish_task(task)
        failed = sim.history[-1]
        assert failed.type == ev.STEP_FAILED and failed.attempt_number == attempt
        sim.apply_next()  # started
        actions = sim.apply_next()  # failed
        assert actions == [SetTimer(failed.time + delay, "retry", "s", None, attempt)]
        assert sim.state.step("s").status == RETRYING
        assert sim.state.step("s").due_at == failed.time + delay
        assert sim.state.step("s").error == f"attempt {attempt}"
        [dispatch] = dispatches(sim.fire(sim.timers[0]))
        assert (
            dispatch.task.attempt == attempt + 1 and dispatch.queued.attempt_number == attempt + 1
        )
        assert sim.state.step("s").status == RETRYING  # until the decision's event is back
        sim.apply_all()
        assert sim.state.step("s").status == QUEUED and sim.state.step("s").attempt == attempt + 1
    final = sim.drain()
    assert final.status == RUN_COMPLETED and final.output == "ok"
    assert final.step("s").attempt == 4
    assert [t.payload.attempt for t in sim.tasks] == [1, 2, 3, 4]


def test_retry_after_uses_the_workers_delay_not_the_policy():
    defn = one_step({"max_attempts": 2, "strategy": "fixed", "initial_delay": "5s"})
    state, _ = start(defn, started_event(defn))
    failed = ev_at(
        ev.STEP_FAILED,
        "s",
        T0 + 1,
        {"error": "429", "failure_type": ev.RETRY_AFTER, "retry_after_ms": 750},
    )
    state, actions = advance(defn, state, failed)
    assert actions == [SetTimer(T0 + 1 + 0.75, "retry", "s", None, 1)]
    # without retry_after_ms the policy's delay applies
    state2, _ = start(defn, started_event(defn))
    failed.payload = {"error": "429", "failure_type": ev.RETRY_AFTER}
    _, actions = advance(defn, state2, failed)
    assert actions == [SetTimer(T0 + 1 + 5.0, "retry", "s", None, 1)]


def test_retry_after_still_counts_attempts():
    defn = one_step({"max_attempts": 1, "strategy": "fixed", "initial_delay": "1s"})
    script = lambda t: Fail(ev.RETRY_AFTER, "slow down", 10)  # noqa: E731
    sim = Sim(defn, script)
    final = sim.run()
    assert final.status == RUN_FAILED and final.error == "step 's' failed: slow down"
    assert [t.payload.attempt for t in sim.tasks] == [1, 2]
    assert sim.of(DeadLetter)[0].attempts == 2


def test_non_retriable_fails_at_once_and_dead_letters_the_task():
    defn = one_step({"max_attempts": 5, "strategy": "fixed", "initial_delay": "10ms"})
    state, _ = start(defn, started_event(defn, {"card": 4}))
    failed = ev_at(
        ev.STEP_FAILED, "s", T0 + 1, {"error": "declined", "failure_type": ev.NON_RETRIABLE}
    )
    state, actions = advance(defn, state, failed)
    task = TaskPayload(
        run_id=RUN,
        step_id="s",
        task="t",
        input={"card": 4},
        workflow_name="one",
        attempt=1,
        def_hash="h",
    )
    [published] = publishes(actions)
    assert actions == [DeadLetter(task, "declined", 1), Publish(published), RunEnded(RUN_FAILED)]
    assert published.type == ev.WORKFLOW_FAILED
    assert published.payload == {"error": "step 's' failed: declined"}
    assert state.status == RUN_FAILED and state.step("s").status == FAILED
    assert state.step("s").error == "declined" and state.ended_at == T0 + 1


def test_without_a_policy_the_first_failure_is_final():
    sim = Sim(one_step(), fail_then(1))
    final = sim.run()
    assert final.status == RUN_FAILED and sim.of(SetTimer) == []
    assert sim.of(DeadLetter)[0].attempts == 1


def test_attempts_total_max_attempts_plus_one():
    defn = one_step({"max_attempts": 2, "strategy": "fixed", "initial_delay": "10ms"})
    sim = Sim(defn, fail_then(99))
    final = sim.run("v")
    assert [t.payload.attempt for t in sim.tasks] == [1, 2, 3]
    assert final.status == RUN_FAILED and final.error == "step 's' failed: attempt 3"
    [letter] = sim.of(DeadLetter)
    assert letter.attempts == 3 and letter.task.attempt == 3 and letter.task.input == "v"
    assert [t.seqno for t in sim.of(SetTimer)] == [1, 2]


def test_retry_policy_resolution_step_retry_then_default_then_retries():
    defn = wf(
        {
            "name": "resolve",
            "default_retry": {"max_attempts": 1, "strategy": "fixed", "initial_delay": "2s"},
            "steps": [
                {
                    "id": "own",
                    "task": "t",
                    "retry": {"max_attempts": 1, "strategy": "fixed", "initial_delay": "3s"},
                },
                {"id": "dflt", "task": "t", "retries": 4},
            ],
        }
    )
    state, _ = start(defn, started_event(defn))
    for sid, delay in (("own", 3.0), ("dflt", 2.0)):
        failed = ev_at(ev.STEP_FAILED, sid, T0 + 1, {"error": "x"})
        state, actions = advance(defn, state, failed)
        assert actions == [SetTimer(T0 + 1 + delay, "retry", sid, None, 1)]
    plain = wf({"name": "r", "steps": [{"id": "s", "task": "t", "retries": 2}]})
    state, _ = start(plain, started_event(plain))
    _, actions = advance(plain, state, ev_at(ev.STEP_FAILED, "s", T0 + 1, {"error": "x"}))
    assert actions == [SetTimer(T0 + 6, "retry", "s", None, 1)]  # `retries`: fixed 5 s


def test_stale_failure_of_an_old_attempt_is_ignored():
    defn = one_step({"max_attempts": 3, "strategy": "fixed", "initial_delay": "1s"})
    state, _ = start(defn, started_event(defn))
    failed1 = ev_at(ev.STEP_FAILED, "s", T0 + 1, {"error": "first"}, attempt=1)
    state, _ = advance(defn, state, failed1)
    again, actions = advance(defn, state, copy.deepcopy(failed1))  # while retrying
    assert actions == [] and summary(defn, again) == summary(defn, state)
    state, actions = advance(defn, state, Timer(T0 + 2, "retry", RUN, "s", None, 1))
    [d] = dispatches(actions)
    assert d.task.attempt == 2
    state, _ = advance(defn, state, d.queued)
    for stale in (failed1, ev_at(ev.STEP_STARTED, "s", T0 + 3, attempt=1)):
        after, actions = advance(defn, state, stale)  # attempt 2 queued
        assert actions == [] and summary(defn, after) == summary(defn, state)
        assert after.step("s").status == QUEUED and after.step("s").attempt == 2
    # a timer for an attempt that is no longer waiting does nothing
    after, actions = advance(defn, state, Timer(T0 + 9, "retry", RUN, "s", None, 1))
    assert actions == [] and summary(defn, after) == summary(defn, state)


# -- 3. exactly once ---------------------------------------------------------------------------


def test_duplicate_completion_is_applied_once():
    defn = wf(
        {
            "name": "dups",
            "default_retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
            "steps": [{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"]}],
        }
    )
    state, _ = start(defn, started_event(defn, 0))
    done = ev_at(ev.STEP_COMPLETED, "a", T0 + 1, "first", attempt=1)
    state, actions = advance(defn, state, done)
    assert [d.task.step_id for d in dispatches(actions)] == ["b"]
    same = copy.deepcopy(done)
    other = ev_at(ev.STEP_COMPLETED, "a", T0 + 2, "second", attempt=2)
    for dup in (same, other):
        after, actions = advance(defn, state, dup)
        assert actions == []
        assert summary(defn, after) == summary(defn, state)
        assert after.step("a").output == "first"

    sim = Sim(defn, lambda t: t.input + 1)
    sim.begin(0)
    sim.apply_all()
    task = sim.task_for("a")
    sim.start_task(task)
    sim.finish_task(task, duplicate=True, redeliver=True)
    sim.work(sim.task_for("a"))  # redelivered: runs again, reports again
    final = sim.drain()
    assert len(sim.events(ev.STEP_COMPLETED, "a")) == 3
    assert final.output == 2 and sim.inputs("b") == [1]
    assert sim.completions == Counter({"a": 1, "b": 1})
    assert all(n == 1 for n in sim.dispatched.values())


def test_duplicate_workflow_started_unknown_steps_and_late_events_are_ignored():
    defn = wf({"name": "ign", "steps": [{"id": "a", "task": "t"}]})
    state, _ = start(defn, started_event(defn, 1))
    for e in (
        started_event(defn, 2, T0 + 1),
        ev_at(ev.STEP_COMPLETED, "ghost", T0 + 1, 1),
        ev_at(ev.STEP_FAILED, "ghost", T0 + 1, {"error": "x"}),
        Event(ev.STEP_COMPLETED, RUN, format_time(T0 + 1), payload=1),  # no step
    ):
        after, actions = advance(defn, state, e)
        assert actions == [] and summary(defn, after) == summary(defn, state)
        assert after.input == 1 and after.started_at == T0
    done, _ = advance(defn, state, ev_at(ev.STEP_COMPLETED, "a", T0 + 2, 5))
    assert done.status == RUN_COMPLETED and done.output == 5
    for e in (
        ev_at(ev.STEP_COMPLETED, "a", T0 + 3, 6, attempt=2),
        ev_at(ev.STEP_FAILED, "a", T0 + 3, {"error": "late"}),
        Event(ev.WORKFLOW_CANCELLED, RUN, format_time(T0 + 3), payload={"reason": "late"}),
        Event(ev.WORKFLOW_FAILED, RUN, format_time(T0 + 3), payload={"error": "late"}),
    ):
        after, actions = advance(defn, done, e)
        assert actions == [] and summary(defn, after) == summary(defn, done)
    for timer in (Timer(T0 + 9, "run_timeout", RUN), Timer(T0 + 9, "retry", RUN, "a", None, 1)):
        after, actions = advance(defn, done, timer)
        assert actions == [] and after.status == RUN_COMPLETED


def test_the_run_end_event_coming_back_clears_the_outbox_only():
    defn = wf({"name": "end", "steps": [{"id": "a", "task": "t"}]})
    sim = Sim(defn)
    sim.begin("v")
    sim.apply_all()
    sim.work_step("a")
    state = sim.state
    assert state.status == RUN_COMPLETED and state.outbox == {}
    [done] = sim.events(ev.WORKFLOW_COMPLETED)
    assert done.msg_id == f"{RUN}.workflow.completed"
    assert state.event_count == len(sim.history)


# -- 4. skip_if, concurrency, map, agent loop, timeout, cancel -------------------------------


def test_skip_if_skips_and_downstream_steps_still_run():
    defn = wf(
        {
            "name": "skipper",
            "steps": [
                {"id": "check", "task": "t"},
                {
                    "id": "fix",
                    "task": "t",
                    "depends_on": ["check"],
                    "skip_if": {"step_id": "check", "field": "status", "op": "==", "value": "ok"},
                },
                {"id": "after", "task": "t", "depends_on": ["fix"]},
                {"id": "notify", "task": "t", "depends_on": ["check", "fix"]},
            ],
        }
    )
    sim = Sim(defn, {"check": lambda t: {"status": "ok"}, "after": lambda t: ["after", t.input]})
    final = sim.run()
    assert final.step("fix").status == SKIPPED and final.step("fix").output is None
    assert sim.inputs("fix") == []
    assert sim.inputs("after") == [None] and sim.inputs("notify") == [
        {"check": {"status": "ok"}, "fix": None}
    ]
    assert final.status == RUN_COMPLETED
    assert final.output == {
        "after": ["after", None],
        "notify": {"check": {"status": "ok"}, "fix": None},
    }
    [skipped] = sim.events(ev.STEP_SKIPPED)
    assert skipped.step_id == "fix" and skipped.payload == {"reason": "status == 'ok'"}

    sim = Sim(defn, {"check": lambda t: {"status": "bad"}})
    final = sim.run()
    assert final.step("fix").status == COMPLETED and sim.inputs("fix") == [{"status": "bad"}]
    assert sim.events(ev.STEP_SKIPPED) == []


def test_skipping_the_only_steps_completes_the_run():
    defn = wf(
        {
            "name": "allskip",
            "steps": [
                {"id": "a", "task": "t"},
                {
                    "id": "b",
                    "task": "t",
                    "depends_on": ["a"],
                    "skip_if": {"step_id": "a", "field": "n", "op": ">", "value": 1},
                },
            ],
        }
    )
    sim = Sim(defn)
    final = sim.run({"n": 2})
    assert final.status == RUN_COMPLETED and final.output is None
    assert final.step("b").status == SKIPPED


def test_concurrency_max_steps_dispatches_as_slots_free():
    defn = wf(
        {
            "name": "limited",
            "concurrency": {"max_steps": 2},
            "steps": [{"id": f"s{i}", "task": "t"} for i in range(5)],
        }
    )
    sim = Sim(defn)
    sim.begin(1)
    sim.apply_all()
    assert [t.payload.step_id for t in sim.pending()] == ["s0", "s1"]
    sim.work_step("s1")
    assert [t.payload.step_id for t in sim.pending()] == ["s0", "s2"]
    final = sim.drain()
    assert final.output == {f"s{i}": 1 for i in range(5)}
    assert sim.max_active == 2
    assert [t.payload.step_id for t in sim.tasks] == ["s0", "s1", "s2", "s3", "s4"]


def test_concurrency_max_steps_counts_steps_waiting_to_retry():
    """A step waiting for its retry holds its slot: the retry must not exceed max_steps."""
    defn = wf(
        {
            "name": "limited-retry",
            "concurrency": {"max_steps": 2},
            "default_retry": {"max_attempts": 1, "strategy": "fixed", "initial_delay": "1s"},
            "steps": [{"id": f"s{i}", "task": "t"} for i in range(4)],
        }
    )
    sim = Sim(defn, {"s0": fail_then(1)})
    sim.begin(1)
    sim.apply_all()
    sim.work_step("s0")  # fails, waits 1 s for attempt 2
    assert sim.state.step("s0").status == RETRYING
    assert [t.payload.step_id for t in sim.pending()] == ["s1"]
    sim.work_step("s1")  # one slot frees: s2 takes it, s0 keeps its own
    assert [t.payload.step_id for t in sim.pending()] == ["s2"]
    sim.fire(sim.timers[0])
    sim.apply_all()
    assert sorted(t.payload.step_id for t in sim.pending()) == ["s0", "s2"]
    final = sim.drain()
    assert final.status == RUN_COMPLETED and sim.max_active == 2


MAP_WF: dict[str, Any] = {
    "name": "mapper",
    "steps": [
        {"id": "items", "task": "items"},
        {"id": "m", "task": "sq", "type": "map", "depends_on": ["items"]},
        {"id": "total", "task": "total", "depends_on": ["m"]},
    ],
}


def map_wf(**config: Any) -> WorkflowDef:
    data = copy.deepcopy(MAP_WF)
    if config:
        data["steps"][1]["config"] = config
    return wf(data)


def test_map_outputs_are_in_item_order_whatever_the_completion_order():
    defn = map_wf()
    sim = Sim(defn, {"items": echo, "m": lambda t: t.input * t.input})
    sim.begin([1, 2, 3, 4])
    sim.apply_all()
    sim.work_step("items")
    [started] = sim.events(ev.MAP_STARTED)
    assert started.payload == {"count": 4}
    tasks = sim.pending("m")
    assert [(t.payload.map_index, t.payload.input) for t in tasks] == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
    ]
    assert [t.payload.task_id for t in tasks] == [f"{RUN}.m.map.{i}" for i in range(4)]
    for t in reversed(tasks):
        sim.work(t)
        if t.payload.map_index:
            assert sim.state.step("m").status in (QUEUED, RUNNING)
    final = sim.drain()
    assert final.step("m").output == [1, 4, 9, 16]
    assert sim.inputs("total") == [[1, 4, 9, 16]] and final.output == [1, 4, 9, 16]
    [completed] = sim.events(ev.MAP_COMPLETED)
    assert completed.payload == {"count": 4}
    instances = sim.events(ev.STEP_COMPLETED, "m")
    assert sorted(e.map_index for e in instances) == [0, 1, 2, 3]
    assert {json.loads(e.encode())["step_id"] for e in instances} == {
        f"m.map.{i}" for i in range(4)
    }


def test_map_over_an_empty_list_completes_with_an_empty_list():
    defn = map_wf()
    sim = Sim(defn)
    final = sim.run([])
    assert final.status == RUN_COMPLETED and final.step("m").output == []
    assert sim.inputs("total") == [[]] and sim.inputs("m") == []
    assert [e.type for e in sim.history if e.step_id == "m"] == [ev.MAP_STARTED, ev.MAP_COMPLETED]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"a": 1}, "map step 'm' needs an array input, got dict"),
        (None, "map step 'm' needs an array input, got NoneType"),
        ([1, 2, 3], "map step 'm' got 3 items, more than max_items 2"),
    ],
)
def test_map_input_that_is_not_a_list_or_too_long_fails_the_run(value: Any, error: str):
    defn = map_wf(max_items=2)
    sim = Sim(defn)
    final = sim.run(value)
    assert final.status == RUN_FAILED and final.error == f"step 'm' failed: {error}"
    assert final.step("m").status == FAILED and final.step("m").error == error
    assert sim.inputs("m") == [] and sim.of(DeadLetter) == []
    [failed] = sim.events(ev.STEP_FAILED, "m")
    assert failed.payload == {"error": error, "failure_type": ev.NON_RETRIABLE}
    assert final.step("total").status == PENDING


def test_a_map_step_failing_at_start_stops_scheduling_its_siblings():
    """Regression: schedule() went on dispatching ready steps after a map step whose input
    was not a list had failed the run in the same pass."""
    defn = wf(
        {
            "name": "siblings",
            "steps": [
                {"id": "a", "task": "t"},
                {"id": "m", "task": "t", "type": "map", "depends_on": ["a"]},
                {"id": "b", "task": "t", "depends_on": ["a"]},
            ],
        }
    )
    state, _ = start(defn, started_event(defn))
    done = ev_at(ev.STEP_COMPLETED, "a", T0 + 1, {"not": "a list"})
    state, actions = advance(defn, state, done)
    assert state.status == RUN_FAILED
    assert dispatches(actions) == []
    assert [e.type for e in publishes(actions)] == [ev.STEP_FAILED, ev.WORKFLOW_FAILED]
    assert state.step("b").status == PENDING and actions[-1] == RunEnded(RUN_FAILED)


def test_a_run_ended_by_a_map_step_drops_the_tasks_decided_before_in_the_same_event():
    """Regression: steps dispatched earlier in the schedule() pass that then failed the run
    (a map step without a list) went out as tasks for a failed run."""
    defn = wf(
        {
            "name": "siblings2",
            "steps": [
                {"id": "a", "task": "t"},
                {"id": "b", "task": "t", "depends_on": ["a"]},
                {"id": "m", "task": "t", "type": "map", "depends_on": ["a"]},
            ],
        }
    )
    state, _ = start(defn, started_event(defn))
    done = ev_at(ev.STEP_COMPLETED, "a", T0 + 1, "no list")
    state, actions = advance(defn, state, done)
    assert state.status == RUN_FAILED and state.step("b").status == CANCELLED
    assert dispatches(actions) == []
    assert [e.type for e in publishes(actions)] == [ev.STEP_FAILED, ev.WORKFLOW_FAILED]
    assert not [e for e, task in state.outbox.values() if task is not None and e.step_id == "b"]


def test_map_fails_fast_when_one_instance_exhausts_its_retries():
    defn = wf(
        {
            **copy.deepcopy(MAP_WF),
            "default_retry": {"max_attempts": 1, "strategy": "fixed", "initial_delay": "1s"},
        }
    )
    script = {"m": lambda t: Fail(error="corrupt") if t.input == 3 else t.input}
    sim = Sim(defn, script)
    sim.begin([1, 2, 3, 4])
    sim.apply_all()
    sim.work_step("items")
    sim.work_step("m", 2)
    assert sim.state.step("m").map.active[2].status == RETRYING
    assert sim.timers == [SetTimer(sim.history[-1].time + 1, "retry", "m", 2, 1)]
    sim.fire(sim.timers[0])
    sim.apply_all()
    retry = sim.task_for("m", 2)
    assert retry.payload.attempt == 2 and retry.payload.input == 3
    sim.work(retry)
    state = sim.state
    assert state.status == RUN_FAILED and state.error == "step 'm' failed: item 2: corrupt"
    [letter] = sim.of(DeadLetter)
    assert letter.attempts == 2 and letter.task.map_index == 2 and letter.task.input == 3
    sim.work_step("m", 0)  # finishing late changes nothing
    assert summary(defn, sim.state) == summary(defn, state)


def test_map_instances_retry_on_their_own():
    defn = wf(
        {
            **copy.deepcopy(MAP_WF),
            "default_retry": {"max_attempts": 2, "strategy": "linear", "initial_delay": "1s"},
        }
    )
    sim = Sim(defn, {"m": lambda t: Fail() if t.input == "b" and t.attempt < 3 else t.input})
    final = sim.run(["a", "b", "c"])
    assert final.status == RUN_COMPLETED and final.step("m").output == ["a", "b", "c"]
    attempts = [
        (t.payload.map_index, t.payload.attempt)
        for t in sim.tasks
        if t.payload.map_index is not None
    ]
    assert attempts == [(0, 1), (1, 1), (2, 1), (1, 2), (1, 3)]
    assert [(t.map_index, t.seqno) for t in sim.of(SetTimer)] == [(1, 1), (1, 2)]
    fails = sim.events(ev.STEP_FAILED, "m")
    assert [t.at for t in sim.of(SetTimer)] == [fails[0].time + 1, fails[1].time + 2]


def test_map_concurrency_limits_instances_in_flight():
    defn = map_wf(concurrency=2)
    sim = Sim(defn)
    sim.begin([10, 20, 30, 40, 50])
    sim.apply_all()
    sim.work_step("items")
    assert [t.payload.map_index for t in sim.pending("m")] == [0, 1]
    sim.work_step("m", 1)
    assert [t.payload.map_index for t in sim.pending("m")] == [0, 2]
    final = sim.drain()
    assert final.step("m").output == [10, 20, 30, 40, 50]
    assert sim.max_active == 2


def test_map_respects_workflow_max_steps_too():
    data = copy.deepcopy(MAP_WF)
    data["concurrency"] = {"max_steps": 3}
    data["steps"].append({"id": "side", "task": "t"})
    defn = wf(data)
    sim = Sim(defn)
    sim.begin([1, 2, 3, 4])
    sim.apply_all()
    sim.work_step("items")
    assert sorted((t.payload.step_id, t.payload.map_index) for t in sim.pending()) == [
        ("m", 0),
        ("m", 1),
        ("side", None),
    ]
    final = sim.drain()
    assert final.output == {"side": [1, 2, 3, 4], "total": [1, 2, 3, 4]}
    assert sim.max_active == 3


def loop_wf(**loop: Any) -> WorkflowDef:
    return wf(
        {
            "name": "looper",
            "steps": [
                {"id": "think", "task": "think", "type": "agent_loop", "loop": loop},
                {"id": "after", "task": "t", "depends_on": ["think"]},
            ],
        }
    )


def counter(limit: int) -> Script:
    def run(t: TaskPayload) -> Any:
        n = t.input["n"] + 1
        return Cont({"n": n}) if n < limit else {"n": n, "done": True}

    return run


def test_agent_loop_continues_with_the_continued_output_as_input():
    defn = loop_wf(max_iterations=10)
    sim = Sim(defn, {"think": counter(3)})
    final = sim.run({"n": 0})
    tasks = [t.payload for t in sim.tasks if t.payload.step_id == "think"]
    assert [(t.iteration, t.attempt, t.input) for t in tasks] == [
        (0, 1, {"n": 0}),
        (1, 1, {"n": 1}),
        (2, 1, {"n": 2}),
    ]
    queued = sim.events(ev.STEP_QUEUED, "think")
    assert [(q.payload, q.iteration) for q in queued] == [(None, 0), (None, 1), (None, 2)]
    assert final.step("think").output == {"n": 3, "done": True}
    assert final.step("think").iteration == 2
    assert sim.inputs("after") == [{"n": 3, "done": True}]
    assert [e.iteration for e in sim.events(ev.STEP_CONTINUE)[1:]] == [1]


def test_agent_loop_stops_at_max_iterations():
    defn = loop_wf(max_iterations=3)
    sim = Sim(defn, {"think": counter(100)})
    final = sim.run({"n": 0})
    assert [t.payload.iteration for t in sim.tasks if t.payload.step_id == "think"] == [0, 1, 2]
    assert final.step("think").output == {"n": 3}
    [done] = sim.events(ev.STEP_COMPLETED, "think")
    assert done.attempt_number == 0
    assert done.payload == {"n": 3} and done.iteration == 2
    [why] = sim.events(ev.AGENT_LOOP_ITERATION)
    assert why.payload == {"stopped": "max_iterations", "iteration": 2}
    assert final.output == {"n": 3}


def test_agent_loop_delay_sets_a_loop_timer():
    defn = loop_wf(max_iterations=3, loop_delay="2s")
    sim = Sim(defn, {"think": counter(100)})
    sim.begin({"n": 0})
    sim.apply_all()
    sim.work_step("think")
    cont = sim.events(ev.STEP_CONTINUE)[-1]
    assert sim.timers == [SetTimer(cont.time + 2, "loop", "think", None, 1)]
    assert sim.state.step("think").status == WAITING and sim.pending() == []
    # an early, stale or repeated timer does nothing
    for wrong in (Timer(cont.time + 2, "loop", RUN, "think", None, 2),):
        after, actions = advance(defn, sim.state, wrong)
        assert actions == [] and summary(defn, after) == summary(defn, sim.state)
    [d] = dispatches(sim.fire(sim.timers[0]))
    assert d.task.iteration == 1 and d.task.input == {"n": 1} and d.task.attempt == 1
    final = sim.drain()
    assert final.step("think").output == {"n": 3}
    assert [t.seqno for t in sim.of(SetTimer)] == [1, 2]


def test_agent_loop_max_duration_stops_the_loop():
    defn = loop_wf(max_iterations=100, max_duration="1s")
    state, actions = start(defn, started_event(defn, {"n": 0}))
    for it in range(3):  # 0.4 s each: the third ends 1.2 s after the loop began
        [d] = dispatches(actions)
        assert d.task.iteration == it and d.task.input == {"n": it}
        state, _ = advance(defn, state, d.queued)
        cont = result_event(d.task, Cont({"n": it + 1}), T0 + 0.4 * (it + 1))
        state, actions = advance(defn, state, cont)
    assert state.step("think").status == COMPLETED and state.step("think").output == {"n": 3}
    [done] = [e for e in publishes(actions) if e.type == ev.STEP_COMPLETED]
    assert done.payload == {"n": 3} and done.iteration == 2
    [why] = [e for e in publishes(actions) if e.type == ev.AGENT_LOOP_ITERATION]
    assert why.payload == {"stopped": "max_duration", "iteration": 2}
    assert [d.task.step_id for d in dispatches(actions)] == ["after"]


def test_workflow_timeout_fails_the_run():
    defn = wf(
        {
            "name": "sleepy",
            "timeout": "30s",
            "steps": [
                {"id": "nap", "task": "t"},
                {"id": "after", "task": "t", "depends_on": ["nap"]},
            ],
        }
    )
    state, actions = start(defn, started_event(defn))
    assert timers(actions) == [SetTimer(T0 + 30, "run_timeout")]
    state, _ = advance(defn, state, dispatches(actions)[0].queued)
    state, _ = advance(defn, state, ev_at(ev.STEP_STARTED, "nap", T0 + 1))
    state, actions = advance(defn, state, Timer(T0 + 30, "run_timeout", RUN))
    error = "workflow 'sleepy' timed out after 30s"
    [failed] = publishes(actions)
    assert actions == [Publish(failed)]
    assert failed.type == ev.WORKFLOW_FAILED and failed.payload == {"error": error}
    assert failed.time == T0 + 30
    # the decision takes effect when its event is back, where replay will see it too
    assert state.status == "running" and list(state.outbox) == [failed.msg_id]
    state, actions = advance(defn, state, failed)
    assert actions == [RunEnded(RUN_FAILED)] and state.outbox == {}
    assert state.status == RUN_FAILED and state.error == error and state.ended_at == T0 + 30
    assert state.step("nap").status == CANCELLED and state.step("after").status == PENDING
    assert resume(defn, state) == []


def test_a_step_finishing_before_the_timeout_event_is_stored_wins_the_race():
    """Regression: the run timeout ended the run at once, but replay only sees its
    workflow.failed event; a completion stored in between turned the run, after a restart,
    from failed into completed (and a second terminal event was published)."""
    defn = wf({"name": "race", "timeout": "10s", "steps": [{"id": "s", "task": "t"}]})
    started = started_event(defn)
    state, actions = start(defn, started)
    queued = dispatches(actions)[0].queued
    state, _ = advance(defn, state, queued)
    state, actions = advance(defn, state, Timer(T0 + 10, "run_timeout", RUN))
    [failed] = publishes(actions)
    done = ev_at(ev.STEP_COMPLETED, "s", T0 + 10, 5)
    history = [started, queued, done, failed]
    for e in history[2:]:
        state, actions = advance(defn, state, e)
    replayed = replay(defn, history)
    assert state.status == replayed.status == RUN_COMPLETED
    assert state.output == replayed.output == 5
    assert summary(defn, state) == summary(defn, replayed)


def test_a_retry_timer_changes_the_state_only_when_its_queued_event_is_back():
    """Regression: a retry timer moved the live state to the next attempt at once, while
    replay sees that decision only at its step.queued event. When the run ended in between
    (another step failed), live and replayed states disagreed."""
    defn = wf(
        {
            "name": "two-failures",
            "steps": [
                {
                    "id": "a",
                    "task": "t",
                    "retry": {"max_attempts": 1, "strategy": "fixed", "initial_delay": "1s"},
                },
                {"id": "b", "task": "t"},
            ],
        }
    )
    sim = Sim(defn, {"a": fail_then(1), "b": fail_then(1)})
    sim.begin()
    sim.apply_all()
    sim.work_step("a")
    task_b = sim.task_for("b")
    sim.start_task(task_b)
    sim.finish_task(task_b)  # stored, not applied yet
    [d] = dispatches(sim.fire(sim.timers[0]))
    assert d.task.attempt == 2 and sim.state.step("a").status == RETRYING
    sim.apply_all()  # b's failure ends the run before a's step.queued comes back
    final = sim.state
    assert final.status == RUN_FAILED and final.error == "step 'b' failed: attempt 1"
    assert final.step("a").status == CANCELLED and final.step("a").attempt == 1
    assert summary(defn, replay(defn, sim.history)) == summary(defn, final)


def test_replay_keeps_a_retry_whose_report_came_before_its_queued_event():
    """Regression: a crash between storing a retry's task and its step.queued event left
    replay in `retrying`; the worker's report on the new attempt was dropped as stale and
    the re-dispatched task was deduplicated by the task stream: the step waited forever."""
    defn = one_step({"max_attempts": 3, "strategy": "fixed", "initial_delay": "1s"})
    started = started_event(defn, 1)
    state, actions = start(defn, started)
    queued1 = dispatches(actions)[0].queued
    failed1 = ev_at(ev.STEP_FAILED, "s", T0 + 1, {"error": "x"}, attempt=1)
    started2 = ev_at(ev.STEP_STARTED, "s", T0 + 3, attempt=2)
    failed2 = ev_at(ev.STEP_FAILED, "s", T0 + 4, {"error": "y"}, attempt=2)
    state = replay(defn, [started, queued1, failed1, started2, failed2])
    assert state.step("s").status == RETRYING and state.step("s").attempt == 2
    assert state.step("s").error == "y" and state.step("s").due_at == T0 + 5
    assert resume(defn, state) == [SetTimer(T0 + 5, "retry", "s", None, 2)]
    done3 = ev_at(ev.STEP_COMPLETED, "s", T0 + 6, "ok", attempt=3)
    state, actions = advance(defn, state, done3)
    assert state.status == RUN_COMPLETED and state.step("s").attempt == 3
    # the late step.queued of attempt 2 and 3 change nothing
    for attempt in (2, 3):
        late = ev_at(ev.STEP_QUEUED, "s", T0 + 7, attempt=attempt)
        assert advance(defn, state, late)[1] == []


def test_replay_keeps_a_loop_iteration_reported_before_its_queued_event():
    defn = loop_wf(max_iterations=5, loop_delay="1s")
    started = started_event(defn, {"n": 0})
    state, actions = start(defn, started)
    queued0 = dispatches(actions)[0].queued
    cont0 = ev_at(ev.STEP_CONTINUE, "think", T0 + 1, {"n": 1})
    cont1 = ev_at(ev.STEP_CONTINUE, "think", T0 + 3, {"n": 2}, iteration=1)
    state = replay(defn, [started, queued0, cont0, cont1])
    think = state.step("think")
    assert think.status == WAITING and think.iteration == 1 and think.output == {"n": 2}
    assert think.input == {"n": 1}
    assert resume(defn, state) == [SetTimer(T0 + 4, "loop", "think", None, 2)]


def test_cancel_event_cancels_the_run_and_its_unfinished_steps():
    defn = wf(
        {
            "name": "cancellable",
            "steps": [
                {"id": "a", "task": "t"},
                {"id": "b", "task": "t"},
                {"id": "c", "task": "t", "depends_on": ["a"]},
            ],
        }
    )
    state, _ = start(defn, started_event(defn))
    state, _ = advance(defn, state, ev_at(ev.STEP_COMPLETED, "b", T0 + 1, 1))
    cancel = Event(ev.WORKFLOW_CANCELLED, RUN, format_time(T0 + 2), payload={"reason": "by user"})
    state, actions = advance(defn, state, cancel)
    assert actions == [RunEnded(RUN_CANCELLED)]
    assert state.status == RUN_CANCELLED and state.error == "by user" and state.ended_at == T0 + 2
    assert state.step("a").status == CANCELLED and state.step("b").status == COMPLETED
    assert state.step("c").status == PENDING
    late = ev_at(ev.STEP_COMPLETED, "a", T0 + 3, 2)
    after, actions = advance(defn, state, late)
    assert actions == [] and summary(defn, after) == summary(defn, state)
    no_reason = Event(ev.WORKFLOW_CANCELLED, RUN, format_time(T0 + 2))
    fresh, _ = start(defn, started_event(defn))
    assert advance(defn, fresh, no_reason)[0].error == "cancelled"


# -- resume and replay -------------------------------------------------------------------------


def test_resume_redelivers_undelivered_decisions_and_timers():
    defn = wf(
        {
            "name": "resumable",
            "timeout": "1h",
            "default_retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "10s"},
            "steps": [{"id": "a", "task": "t"}, {"id": "b", "task": "t"}],
        }
    )
    started = started_event(defn, 5)
    state = replay(defn, [started])
    assert state is not None
    actions = resume(defn, state)
    assert [d.task.step_id for d in dispatches(actions)] == ["a", "b"]
    assert timers(actions) == [SetTimer(T0 + 3600, "run_timeout")]
    queued = [d.queued for d in dispatches(actions)]
    failed = ev_at(ev.STEP_FAILED, "a", T0 + 1, {"error": "x"})
    state = replay(defn, [started, *queued, failed])
    assert timers(resume(defn, state)) == [
        SetTimer(T0 + 3600, "run_timeout"),
        SetTimer(T0 + 11, "retry", "a", None, 1),
    ]
    assert dispatches(resume(defn, state)) == []
    assert replay(defn, []) is None and replay(defn, [failed]) is None


def test_replay_after_a_timer_decision_sees_the_queued_event():
    defn = one_step({"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"})
    sim = Sim(defn, fail_then(1))
    final = sim.run("v")
    assert final.status == RUN_COMPLETED
    assert summary(defn, replay(defn, sim.history)) == summary(defn, final)
    # a crash after the retry was queued but before it ran: the task is not dispatched again
    cut = next(
        i for i, e in enumerate(sim.history) if e.type == ev.STEP_QUEUED and e.attempt_number == 2
    )
    state = replay(defn, sim.history[: cut + 1])
    assert state.step("s").status == QUEUED and state.step("s").attempt == 2
    assert resume(defn, state) == []


def test_resume_of_a_finished_run_publishes_its_events_but_dispatches_no_task():
    """Regression: a run cancelled while a dispatch decision was not yet stored had that task
    dispatched again by resume after a restart: work for a cancelled run."""
    defn = wf({"name": "two", "steps": [{"id": "a", "task": "t"}, {"id": "b", "task": "t"}]})
    started = started_event(defn)
    _, actions = start(defn, started)
    queued_a, queued_b = (d.queued for d in dispatches(actions))
    cancel = Event(ev.WORKFLOW_CANCELLED, RUN, format_time(T0 + 1), payload={"reason": "stop"})
    state = replay(defn, [started, queued_a, cancel])  # crash before b's queued event
    assert state.status == RUN_CANCELLED and queued_b.msg_id in state.outbox
    assert resume(defn, state) == []
    # a finished run's undelivered events are still published
    done = ev_at(ev.STEP_COMPLETED, "a", T0 + 1, 1)
    done_b = ev_at(ev.STEP_COMPLETED, "b", T0 + 2, 2)
    state = replay(defn, [started, queued_a, queued_b, done, done_b])
    [completed] = [e for e in publishes(resume(defn, state))]
    assert state.status == RUN_COMPLETED and completed.type == ev.WORKFLOW_COMPLETED
    assert resume(defn, state) == [Publish(completed)]


def looping_state() -> tuple[WorkflowDef, RunState]:
    """An agent loop (no retries) whose iteration 1 is queued after iteration 0 continued."""
    defn = loop_wf(max_iterations=5)
    state, actions = start(defn, started_event(defn, {"n": 0}))
    state, _ = advance(defn, state, dispatches(actions)[0].queued)
    cont = ev_at(ev.STEP_CONTINUE, "think", T0 + 1, {"n": 1})
    state, actions = advance(defn, state, cont)
    state, _ = advance(defn, state, dispatches(actions)[0].queued)
    assert state.step("think").iteration == 1 and state.step("think").status == QUEUED
    return defn, state


@pytest.mark.parametrize(
    ("type_", "payload"),
    [
        (ev.STEP_STARTED, None),
        (ev.STEP_FAILED, {"error": "late", "failure_type": ev.RETRIABLE}),
        (ev.STEP_COMPLETED, {"n": 99}),
        (ev.STEP_CONTINUE, {"n": 99}),
    ],
)
def test_a_report_on_an_earlier_loop_iteration_is_stale(type_: str, payload: dict | None):
    """Regression: every iteration starts at attempt 1, so a redelivered task of iteration 0
    reporting again (a handler need not answer the same twice) was taken for iteration 1:
    a failure failed the loop, a completion ended it with iteration 0's output."""
    defn, state = looping_state()
    late = ev_at(type_, "think", T0 + 2, payload, attempt=1, iteration=0)
    after, actions = advance(defn, state, late)
    assert actions == []
    assert summary(defn, after) == summary(defn, state)
    assert after.step("think").status == QUEUED


# -- 5. purity ---------------------------------------------------------------------------------


def test_advance_never_mutates_its_input_state():
    data = copy.deepcopy(MAP_WF)
    data["default_retry"] = {"max_attempts": 2, "strategy": "exponential", "initial_delay": "1s"}
    data["steps"] += [
        {
            "id": "loop",
            "task": "t",
            "type": "agent_loop",
            "loop": {"max_iterations": 3, "loop_delay": "1s"},
        },
        {
            "id": "fix",
            "task": "t",
            "depends_on": ["total"],
            "skip_if": {"step_id": "total", "field": "x", "op": "==", "value": 1},
        },
    ]
    data["concurrency"] = {"max_steps": 2}
    defn = wf(data)
    flaky: Counter[Any] = Counter()

    def script(t: TaskPayload) -> Any:
        flaky[(t.step_id, t.map_index, t.iteration)] += 1
        if flaky[(t.step_id, t.map_index, t.iteration)] == 1 and t.step_id != "items":
            return Fail()
        if t.step_id == "loop":
            return Cont({"i": t.iteration})
        return t.input

    sim = Sim(defn, script, check_purity=True)
    final = sim.run([1, 2, 3])
    assert final.status == RUN_COMPLETED and final.output == {"fix": [1, 2, 3], "loop": {"i": 2}}
    fired = len(sim.of(SetTimer)) - len(sim.timers)
    assert sim.purity_checks == len(sim.history) - 1 + fired
    assert sim.purity_checks > 40


# -- 6. property tests: random DAGs, random schedules, crash recovery ----------------------------

FAILURE_KINDS = (ev.RETRIABLE,) * 4 + (ev.RETRY_AFTER,) * 2 + (ev.NON_RETRIABLE,)


def digest(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts, sort_keys=True).encode()) % 1000


@dataclass(frozen=True)
class StepSpec:
    """How the fake worker behaves for one step (a function of the task, never of timing)."""

    kind: str  # normal | list | map | loop | handler | compensate
    fails: tuple[str, ...] = ()  # failure kinds of attempts 1..k (every loop iteration)
    item_fails: tuple[tuple[str, ...], ...] = ((),)  # map: by map_index % len
    continues: int = 0  # loop: iterations that return Continue


@dataclass
class Scenario:
    data: dict[str, Any]
    specs: dict[str, StepSpec]
    value: Any
    defn: WorkflowDef = field(init=False)

    def __post_init__(self) -> None:
        self.defn = wf(self.data)

    def pattern(self, task: TaskPayload) -> tuple[str, ...]:
        spec = self.specs[task.step_id]
        if task.map_index is None:
            return spec.fails
        return spec.item_fails[task.map_index % len(spec.item_fails)]

    def script(self, task: TaskPayload) -> Any:
        sid, spec = task.step_id, self.specs[task.step_id]
        pattern = self.pattern(task)
        if task.attempt <= len(pattern):
            kind = pattern[task.attempt - 1]
            after = 20 if kind == ev.RETRY_AFTER else None
            return Fail(kind, f"{sid} attempt {task.attempt}: {kind}", after)
        if spec.kind == "compensate":
            return {"undone": task.input["original_step"]}
        if spec.kind == "handler":
            return {"handled": task.input["step_id"]}
        if spec.kind == "list":
            return [digest(sid, task.input, i) for i in range(digest(sid, task.input) % 5)]
        out = {"v": digest(sid, task.input)}
        if spec.kind == "loop" and task.iteration < spec.continues:
            return Cont(out)
        return out


def fatal(pattern: tuple[str, ...], defn: WorkflowDef, sid: str) -> bool:
    """Whether attempts following `pattern` exhaust the step's retry policy."""
    policy = defn.retry_policy(sid)
    allowed = policy.max_attempts + 1 if policy is not None else 1
    for attempt in range(1, allowed + 1):
        if attempt > len(pattern):
            return False
        if pattern[attempt - 1] == ev.NON_RETRIABLE:
            return True
    return True


def reference(sc: Scenario) -> tuple[str, Any, dict[str, tuple[str, Any]]]:
    """A straightforward evaluation of the DAG: run status, run output, step -> (status, output).

    Statuses: completed, skipped, failed, blocked (a dependency failed or was blocked).
    """
    defn = sc.defn
    handlers = set(defn.handler_steps)
    ref: dict[str, tuple[str, Any]] = {}
    for sid in defn.topological_order:
        if sid in handlers:
            continue
        step, spec = defn.step(sid), sc.specs[sid]
        deps = step.depends_on
        if any(ref[d][0] in ("failed", "blocked") for d in deps):
            ref[sid] = ("blocked", None)
            continue
        cond = step.skip_if
        if cond is not None and cond.matches(ref[cond.step_id][1]):
            ref[sid] = ("skipped", None)
            continue
        if not deps:
            value = sc.value
        elif len(deps) == 1:
            value = ref[deps[0]][1]
        else:
            value = {d: ref[d][1] for d in deps}
        if spec.kind == "map":
            ok = (
                isinstance(value, list)
                and len(value) <= step.map_config.max_items
                and not any(
                    fatal(spec.item_fails[i % len(spec.item_fails)], defn, sid)
                    for i in range(len(value))
                )
            )
            out = [{"v": digest(sid, x)} for x in value] if ok else None
            ref[sid] = ("completed", out) if ok else ("failed", None)
        elif spec.kind == "loop":
            limit = step.loop_config.max_iterations
            iteration, x = 0, value
            while True:
                if fatal(spec.fails, defn, sid):
                    ref[sid] = ("failed", None)
                    break
                out = {"v": digest(sid, x)}
                if iteration < spec.continues and iteration + 1 < limit:
                    iteration, x = iteration + 1, out
                    continue
                ref[sid] = ("completed", out)
                break
        elif fatal(spec.fails, defn, sid):
            ref[sid] = ("failed", None)
        else:
            task = TaskPayload(RUN, sid, "t", value, defn.name, attempt=len(spec.fails) + 1)
            ref[sid] = ("completed", sc.script(task))
    if any(status == "failed" for status, _ in ref.values()):
        return RUN_FAILED, None, ref
    terminals = defn.terminal_steps
    outs = {t: ref[t][1] for t in terminals}
    return RUN_COMPLETED, outs[terminals[0]] if len(terminals) == 1 else outs, ref


def check_outcome(sc: Scenario, state: RunState) -> None:
    """The final state agrees with the reference evaluation."""
    status, output, ref = reference(sc)
    assert state.terminal, f"run not finished: {state.status}"
    unfinished = {QUEUED, RUNNING, RETRYING, WAITING}
    assert not [sid for sid, stp in state.steps.items() if stp.status in unfinished]
    for sid, spec in sc.specs.items():
        if spec.kind == "compensate" and state.step(sid).status != PENDING:
            # it ran: the run failed after the step it undoes completed, and said so
            assert state.step(sid).status == COMPLETED, state.step(sid)
            assert state.step(sid).output == {"undone": "s0"}
            assert state.step("s0").status == COMPLETED
            assert state.status == RUN_FAILED and state.error.endswith("(compensated)")
    if status == RUN_COMPLETED:
        assert state.status == RUN_COMPLETED, state.error
        assert state.output == output
        for sid, (st_, out) in ref.items():
            assert (state.step(sid).status, state.step(sid).output) == (st_, out), sid
        return
    assert state.status == RUN_FAILED, (state.status, state.output)
    for sid, (st_, out) in ref.items():
        live = state.step(sid)
        if live.status == COMPLETED:
            assert (st_, out) == (COMPLETED, live.output), sid
        elif live.status in (SKIPPED, FAILED):
            assert st_ == live.status, sid
    failed = [sid for sid, (st_, _) in ref.items() if st_ == "failed"]
    assert any(f"step '{sid}' failed" in (state.error or "") for sid in failed), state.error


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 8))
    some = st.lists(st.sampled_from(FAILURE_KINDS), min_size=1, max_size=3).map(tuple)
    fails = st.one_of(st.just(()), st.just(()), st.just(()), some)
    steps: list[dict[str, Any]] = []
    specs: dict[str, StepSpec] = {}
    kinds: dict[str, str] = {}
    for i in range(n):
        sid = f"s{i}"
        earlier = [f"s{j}" for j in range(i)]
        lists = [s for s in earlier if kinds[s] == "list"]
        kind = draw(st.sampled_from(["normal", "normal", "list", "map", "map", "loop"]))
        if kind == "map" and not lists:
            kind = "normal"
        kinds[sid] = kind
        step: dict[str, Any] = {"id": sid, "task": f"t{i}"}
        if kind == "map":
            step["depends_on"] = [draw(st.sampled_from(lists))]
            step["type"] = "map"
            config = draw(
                st.fixed_dictionaries(
                    {}, optional={"max_items": st.integers(2, 4), "concurrency": st.integers(1, 2)}
                )
            )
            if config:
                step["config"] = config
        elif earlier:
            step["depends_on"] = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3))
        if kind == "loop":
            step["type"] = "agent_loop"
            step["loop"] = {"max_iterations": draw(st.integers(1, 3))}
            if draw(st.booleans()):
                step["loop"]["loop_delay"] = "50ms"
        deps = step.get("depends_on", [])
        if deps and draw(st.integers(0, 2)) == 0:
            step["skip_if"] = {
                "step_id": draw(st.sampled_from(deps)),
                "field": "v",
                "op": draw(st.sampled_from(["==", "!=", "<", ">", "<=", ">="])),
                "value": draw(st.integers(0, 999)),
            }
        policy = draw(st.integers(0, 4))
        if policy == 1:
            step["retries"] = draw(st.integers(1, 2))
        elif policy >= 2:
            step["retry"] = {
                "max_attempts": draw(st.integers(0, 3)),
                "strategy": draw(st.sampled_from(["fixed", "linear", "exponential"])),
                "initial_delay": f"{draw(st.integers(1, 300))}ms",
            }
            if draw(st.booleans()):
                step["retry"]["max_delay"] = "150ms"
        steps.append(step)
        item_fails = tuple(draw(st.lists(fails, min_size=1, max_size=3)))
        continues = draw(st.integers(0, 3)) if kind == "loop" else 0
        specs[sid] = StepSpec(kind, draw(fails), item_fails, continues)
    guarded = draw(st.lists(st.sampled_from(steps), unique_by=lambda s: s["id"], max_size=3))
    if guarded:
        steps.append({"id": "h", "task": "handle"})
        specs["h"] = StepSpec("handler")
        for s in guarded:
            s["on_failure"] = "h"
    if draw(st.integers(0, 3)) == 0:
        steps.append({"id": "undo", "task": "undo"})
        specs["undo"] = StepSpec("compensate")
        steps[0]["compensate"] = "undo"
    data: dict[str, Any] = {"name": "gen", "steps": draw(st.permutations(steps))}
    if draw(st.booleans()):
        data["default_retry"] = {"max_attempts": 2, "strategy": "fixed", "initial_delay": "40ms"}
    if draw(st.booleans()):
        data["concurrency"] = {"max_steps": draw(st.integers(1, 3))}
    return Scenario(data, specs, {"x": draw(st.integers(0, 9))})


def random_schedule(sim: Sim, rng: random.Random, max_moves: int = 5_000) -> RunState:
    """Drive `sim` with a random interleaving until the run has ended and all is applied."""
    for _ in range(max_moves):
        state = sim.state
        settled = sim.applied == len(sim.history) and not sim.outgoing
        if settled and state is not None and state.terminal:
            if sim.pending() and rng.random() < 0.5:  # late work for a finished run
                sim.work(rng.choice(sim.pending()))
                continue
            return state
        moves: list[str] = []
        if sim.applied < len(sim.history):
            moves += ["apply"] * 4
        if sim.outgoing:
            moves += ["flush"] * 2
        if sim.pending():
            moves += ["start"] * 2
        if any(t.status == "running" for t in sim.tasks):
            moves += ["finish"] * 2
        if sim.timers and not (state is not None and state.terminal):
            moves.append("fire")
        if not moves:
            raise AssertionError(f"run stuck: {state}")
        move = rng.choice(moves)
        if move == "apply":
            sim.apply_next()
        elif move == "flush":
            sim.flush(rng.randrange(len(sim.outgoing)) if rng.random() < 0.3 else 0)
        elif move == "start":
            sim.start_task(rng.choice(sim.pending()))
        elif move == "finish":
            task = rng.choice([t for t in sim.tasks if t.status == "running"])
            roll = rng.random()
            sim.finish_task(task, duplicate=0.9 <= roll < 0.95, redeliver=roll >= 0.95)
        else:
            sim.fire(rng.choice(sim.timers))
    raise AssertionError("run did not finish")


def prefix_states(defn: WorkflowDef, history: list[Event]) -> list[RunState | None]:
    """states[k] = the state folded from history[:k] (what replay gives after a crash)."""
    states: list[RunState | None] = [None]
    state: RunState | None = None
    for e in history:
        if state is None:
            if e.type == ev.WORKFLOW_STARTED:
                state, _ = start(defn, e)
        else:
            state, _ = advance(defn, state, e)
        states.append(state)
    return states


def recover(sim: Sim, k: int, state: RunState) -> Sim:
    """A new orchestrator after a crash that kept history[:k]: tasks stored by then survive
    (acked ones excepted), everything else in flight is lost; then `resume` runs."""
    new = Sim(sim.defn, sim.script, lag=sim.lag, dedup_window=sim.dedup_window)
    new.history = list(sim.history[:k])
    new.applied = k
    new.state = state
    new.clock = max(e.time for e in new.history)
    for t in sim.tasks:
        if t.stored_at > k:
            continue
        new.stored_ids.add(t.payload.msg_id)
        acked = t.acked_at is not None and t.acked_at <= k
        if not acked and not any(s.payload.msg_id == t.payload.msg_id for s in new.tasks):
            new.tasks.append(SimTask(t.payload, t.stored_at))
    new.perform(resume(sim.defn, state))
    return new


def check_live_run(sc: Scenario, seed: int, lag: bool, dedup: bool) -> tuple[Sim, RunState]:
    sim = Sim(sc.defn, sc.script, lag=lag, dedup_window=dedup)
    sim.begin(sc.value)
    final = random_schedule(sim, random.Random(seed))
    # a. the run ends as the reference says
    check_outcome(sc, final)
    # c. each step's completion is applied exactly once; each task dispatched once
    done = {sid for sid in sc.defn.step_ids if final.step(sid).status == COMPLETED}
    assert sim.completions == Counter({sid: 1 for sid in done})
    assert all(n == 1 for n in sim.dispatched.values()), sim.dispatched
    for sid in sc.defn.step_ids:
        m = final.step(sid).map
        if m is not None and final.step(sid).status == COMPLETED:
            assert m.done == m.count and not m.active
    limit = sc.defn.concurrency.max_steps if sc.defn.concurrency else None
    if limit:
        assert sim.max_active <= limit
    # b. folding the stored history gives the live state
    replayed = replay(sc.defn, sim.history)
    assert replayed is not None
    assert summary(sc.defn, replayed) == summary(sc.defn, final)
    return sim, final


def check_crash_recovery(sc: Scenario, sim: Sim, seed: int) -> None:
    states = prefix_states(sc.defn, sim.history)
    for k in range(1, len(sim.history) + 1):
        state = states[k]
        assert state is not None
        new = recover(sim, k, state)
        final = random_schedule(new, random.Random(seed * 7919 + k))
        check_outcome(sc, final)
        replayed = replay(sc.defn, new.history)
        assert summary(sc.defn, replayed) == summary(sc.defn, final), f"prefix {k}"


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(sc=scenarios(), seed=st.integers(0, 2**32 - 1), dedup=st.booleans())
def test_random_runs_match_the_reference_replay_and_recover_from_any_crash(
    sc: Scenario, seed: int, dedup: bool
):
    sim, _ = check_live_run(sc, seed, lag=False, dedup=dedup)
    check_crash_recovery(sc, sim, seed)


@PROPERTY
@given(sc=scenarios(), seed=st.integers(0, 2**32 - 1), dedup=st.booleans())
def test_random_runs_with_late_and_reordered_decision_events(sc: Scenario, seed: int, dedup: bool):
    """The orchestrator stores a task before its step.queued event and publishes each
    decision on its own: workers' reports can be stored before the decision's event."""
    sim, _ = check_live_run(sc, seed, lag=True, dedup=dedup)
    check_crash_recovery(sc, sim, seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios(), seed=st.integers(0, 2**32 - 1))
def test_advance_and_resume_never_mutate_their_input_on_random_runs(sc: Scenario, seed: int):
    sim = Sim(sc.defn, sc.script, lag=True, check_purity=True)
    sim.begin(sc.value)
    random_schedule(sim, random.Random(seed))
    assert sim.purity_checks >= len(sim.history) - 1
    for state in prefix_states(sc.defn, sim.history)[1:]:
        assert state is not None
        before = copy.deepcopy(state)
        resume(sc.defn, state)
        assert state == before


def test_clone_copies_every_field_of_the_state_classes():
    import dataclasses

    from dagnats_nb.dag import state as st

    for cls in (st.Instance, st.MapState, st.StepState, st.RunState):
        values = {}
        for i, f in enumerate(dataclasses.fields(cls)):
            values[f.name] = f"v{i}"  # a distinct, non-default value in every field
        obj = cls(**values)
        twin = obj.clone()
        assert twin == obj and twin is not obj, cls.__name__


def test_compact_keeps_what_views_need_and_drops_step_values():
    from dagnats_nb.dag.advance import compact
    from dagnats_nb.dag.state import MapState, RunState, StepState

    running = RunState("r", "w", "1", "h", {"in": 1}, 0.0)
    assert compact(running) is running
    done = RunState(
        "r",
        "w",
        "1",
        "h",
        {"in": 1},
        0.0,
        status="completed",
        ended_at=2.0,
        output={"o": 1},
        steps={
            "a": StepState(
                status="completed",
                attempt=2,
                input={"x": 1},
                output={"y": 2},
                error=None,
                worker_id="w1",
                ended_at=1.0,
            ),
            "m": StepState(status="completed", map=MapState(3, [1, 2, 3], 3, 3), output=[1, 2, 3]),
        },
    )
    lean = compact(done)
    assert lean.output == {"o": 1} and lean.input == {"in": 1} and lean.status == "completed"
    assert lean.step("a").status == "completed" and lean.step("a").attempt == 2
    assert lean.step("a").input is None and lean.step("a").output is None
    assert lean.step("a").worker_id == "w1" and lean.step("a").ended_at == 1.0
    assert (lean.step("m").map.done, lean.step("m").map.count) == (3, 3)
    assert lean.step("m").map.outputs == []
    assert done.step("a").output == {"y": 2}  # the input state is untouched
    assert compact(lean) is lean


# -- 6. the wire as Go writes it, and histories written before it --------------------------------


def legacy_form(e: Event) -> Event:
    """``e`` as dagnats-nb < 0.2 wrote it: outputs wrapped, map index and loop iteration in the
    payload, map instances completing as step.map.instance.completed."""
    if e.type == ev.WORKFLOW_STARTED:
        payload = {"workflow": "w", "version": "1", "def_hash": "h", "input": e.payload["input"]}
        return Event(e.type, e.run_id, e.timestamp, payload=payload)
    if not e.step_id or e.type not in (
        ev.STEP_QUEUED,
        ev.STEP_STARTED,
        ev.STEP_COMPLETED,
        ev.STEP_CONTINUE,
        ev.STEP_FAILED,
    ):
        return e
    body: dict[str, Any] = {}
    if e.type in (ev.STEP_COMPLETED, ev.STEP_CONTINUE):
        body = {"output": e.payload, "duration_ms": 1.5}
    elif e.type == ev.STEP_FAILED:
        body = dict(e.payload)
    if e.map_index is not None:
        body["map_index"] = e.map_index
    if e.iteration:
        body["iteration"] = e.iteration
    kind = e.type
    if kind == ev.STEP_COMPLETED and e.map_index is not None:
        kind = ev.MAP_INSTANCE_COMPLETED
    return Event(
        kind,
        e.run_id,
        e.timestamp,
        step_id=e.step_id,
        payload=body or None,
        worker_id=e.worker_id,
        attempt_number=e.attempt_number,
    )


def test_a_history_written_before_the_go_wire_replays_to_the_same_state():
    """Runs recorded by dagnats-nb < 0.2 (wrapped outputs, map index in the payload) read as
    they always did: a map step with a retried item, an agent loop, a fan-in."""
    defn = wf(
        {
            "name": "mixed",
            "steps": [
                {"id": "items", "task": "items"},
                {"id": "m", "task": "sq", "type": "map", "depends_on": ["items"]},
                {
                    "id": "think",
                    "task": "think",
                    "type": "agent_loop",
                    "loop": {"max_iterations": 5},
                },
                {"id": "join", "task": "join", "depends_on": ["m", "think"]},
            ],
            "default_retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
        }
    )
    tries: Counter = Counter()

    def square(t: TaskPayload) -> Any:
        tries[t.map_index] += 1
        if t.map_index == 1 and tries[1] == 1:
            return Fail(error="flaky")
        return {"sq": t.input * t.input, "output": "a key named output"}

    sim = Sim(
        defn,
        {"items": lambda t: [1, 2, 3], "m": square, "think": counter(3), "join": echo},
    )
    final = sim.run({"n": 0})
    assert final.status == RUN_COMPLETED
    assert final.step("m").output[1] == {"sq": 4, "output": "a key named output"}
    new = replay(defn, sim.history)
    old = replay(defn, [legacy_form(e) for e in sim.history])
    assert old.legacy and not new.legacy
    assert summary(defn, old) == summary(defn, new) == summary(defn, final)


def test_a_go_workers_report_without_an_iteration_counts_for_the_current_one():
    """Go's workers echo no iteration: a report from one on a later loop iteration is that
    iteration's, not a stale one."""
    defn, state = looping_state()
    go_report = ev_at(ev.STEP_COMPLETED, "think", T0 + 2, {"n": 7}, attempt=1, iteration=None)
    after, actions = advance(defn, state, go_report)
    assert after.step("think").status == COMPLETED and after.step("think").output == {"n": 7}
    assert [d.task.step_id for d in dispatches(actions)] == ["after"]


def test_go_wire_events_decode_to_the_step_and_map_index():
    raw = {
        "type": "step.completed",
        "run_id": "r1",
        "step_id": "m.map.12",
        "timestamp": "2026-11-30T10:00:00.5Z",
        "payload": "Hello, ada!",
        "worker_id": "go-1",
        "attempt_number": 1,
    }
    e = Event.decode(json.dumps(raw).encode())
    assert (e.step_id, e.map_index, e.payload, e.iteration) == ("m", 12, "Hello, ada!", None)
    assert json.loads(e.encode()) == raw | {"timestamp": e.timestamp}
    assert e.msg_id == "r1.m.map.12.step.completed.1"
    falsy = Event(ev.STEP_COMPLETED, "r1", step_id="a", payload=0)
    assert json.loads(falsy.encode())["payload"] == 0  # a raw output of 0 is not "no payload"
