"""What happens next in a run: ``advance(definition, state, event) -> (state, actions)``.

Pure: no I/O, no clock (time comes from the event). The input state is never mutated;
changed step states are copied. The same function serves live processing and replay: on
replay the shell applies events and drops the actions, then asks :func:`resume` for what is
still outstanding (undelivered decisions, timers).

Decisions the core makes itself (skip a step, finish a run, dispatch a task) are also
written to the history as events; until such an event comes back it waits in
``state.outbox`` so a crash between deciding and publishing loses nothing.

This module is the core's entry points (start, advance, resume, replay, compact); behind
them, `plan` holds what a definition implies, `fold` how each event or timer changes a
run, and `transaction` the copy-on-write state and the decisions.
"""

from __future__ import annotations

from collections.abc import Iterable

from .events import WORKFLOW_STARTED, Event, start_shape, started_input, upgrade_legacy
from .fold import GATE_TIMERS, Fold
from .gates import ApprovalGate, EventWait, child_workflow
from .model import SUPPORTED_STEP_TYPES as SUPPORTED
from .model import WorkflowDef
from .plan import plan, resolve_input, run_output
from .state import (
    QUEUED,
    RETRYING,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_PENDING,
    RUNNING,
    WAITING,
    Action,
    AwaitAdmission,
    AwaitEvent,
    Dispatch,
    MapState,
    Publish,
    RequestApproval,
    RunState,
    SetTimer,
    SpawnChild,
    TaskPayload,
    Timer,
)
from .validate import _TASK_TYPES

__all__ = [
    "advance",
    "compact",
    "queued_tasks",
    "replay",
    "resolve_input",
    "resume",
    "run_output",
    "start",
]


def start(defn: WorkflowDef, event: Event) -> tuple[RunState, list[Action]]:
    """The state of a new run from its ``workflow.started`` event."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    state = RunState(
        run_id=event.run_id,
        workflow=defn.name,
        version=defn.version,
        def_hash=payload.get("def_hash", ""),
        input=started_input(event.payload),
        started_at=event.time,
        legacy=start_shape(event.payload) == "legacy",
        parent_run_id=str(payload.get("parent_run_id") or ""),
        parent_step_id=str(payload.get("parent_step_id") or ""),
        root_run_id=str(payload.get("root_run_id") or ""),
        depth=payload["depth"] if isinstance(payload.get("depth"), int) else 0,
    )
    tx = Fold(defn, state, event.time)
    unsupported = [f"{s.type} (step '{s.id}')" for s in defn.steps if s.type not in SUPPORTED]
    if unsupported:  # started by another engine (the Go CLI) from a definition we cannot run
        why = (
            f"workflow '{defn.name}' uses step types this engine does not run yet: "
            f"{', '.join(unsupported)}; run it on the Go dagnats engine"
        )
        tx.end_run(RUN_FAILED, error=why)
        return tx.finish(event)
    tx.on_fork(event.payload)  # a fork: the steps it reuses are completed first
    limit = max_runs(defn)
    if limit and not state.parent_run_id:  # children are not admitted, as in Go
        tx.state.status = RUN_PENDING
        tx.actions.append(AwaitAdmission(defn.name, limit))
        return tx.finish(event)
    if defn.timeout:
        tx.actions.append(SetTimer(state.started_at + defn.timeout.total_seconds(), "run_timeout"))
    tx.schedule()
    return tx.finish(event)


def max_runs(defn: WorkflowDef) -> int:
    """The workflow's ``concurrency.max_runs`` (0: no limit)."""
    return (defn.concurrency.max_runs or 0) if defn.concurrency else 0


def advance(
    defn: WorkflowDef, state: RunState, event: Event | Timer
) -> tuple[RunState, list[Action]]:
    """Apply one event (or timer) to a run; return the new state and the actions to take."""
    if isinstance(event, Timer):
        tx = Fold(defn, state, event.at)
        tx.on_timer(event)
        return tx.state, tx.actions
    if state.legacy:
        event = upgrade_legacy(event)
    tx = Fold(defn, state, event.time)
    tx.on_event(event)
    return tx.finish(event)


def resume(defn: WorkflowDef, state: RunState) -> list[Action]:
    """What a run still needs after replay: undelivered decisions and pending timers."""
    actions: list[Action] = []
    for event, task in state.outbox.values():
        if task is not None and state.terminal:
            continue  # a finished run dispatches no more work
        actions.append(Dispatch(task, event) if task is not None else Publish(event))
    if state.terminal or state.status == RUN_PENDING:
        return actions  # a pending run is admitted by the shell, which counts slots
    if defn.timeout:
        since = state.resumed_at or state.started_at
        deadline = since + defn.timeout.total_seconds()
        actions.append(SetTimer(deadline, "run_timeout", seqno=state.reopened))
    for sid, st in state.steps.items():
        if st.status == RETRYING and st.due_at is not None:
            actions.append(SetTimer(st.due_at, "retry", sid, None, st.attempt))
        elif st.status == WAITING and st.due_at is not None:
            actions.append(SetTimer(st.due_at, "loop", sid, None, st.iteration + 1))
        elif st.status == RUNNING and st.due_at is not None:
            actions += _resume_gate(defn, sid, st)
        elif st.status == RUNNING and isinstance(st.detail, str):  # a sub_workflow's child
            workflow, _ = child_workflow(plan(defn).steps[sid])
            actions.append(SpawnChild(sid, st.detail, workflow, st.input))
        if st.map is not None:
            for idx, inst in st.map.active.items():
                if inst.status == RETRYING and inst.due_at is not None:
                    actions.append(SetTimer(inst.due_at, "retry", sid, idx, inst.attempt))
    return actions


def queued_tasks(defn: WorkflowDef, state: RunState) -> list[TaskPayload]:
    """The tasks of the run's queued steps (and map items), as the core dispatched them:
    their ``step.queued`` is in the history (those still in the outbox :func:`resume` sends)
    and no worker has started them, so a task queue should hold each. One that none holds
    was lost (the server refused it just before a crash): the shell sends it again
    (``runtime.requeue``)."""
    if state.terminal or not state.steps:
        return []
    tx = Fold(defn, state, state.started_at)
    sent = {task.msg_id for _, task in state.outbox.values() if task is not None}
    out: list[TaskPayload] = []
    for sid, st in state.steps.items():
        step = tx.plan.steps.get(sid)
        if step is None or not step.task or step.type not in _TASK_TYPES:
            continue
        if st.map is not None:
            for idx, inst in st.map.active.items():
                if inst.status == QUEUED:
                    out.append(tx.task(sid, st.input[idx], inst.attempt, 0, idx))
        elif st.status == QUEUED:
            out.append(tx.task(sid, st.input, st.attempt, st.iteration))
    return [task for task in out if task.msg_id not in sent]


_GATE_TIMER = {step_type: kind for kind, (step_type, _) in GATE_TIMERS.items()}


def _resume_gate(defn: WorkflowDef, sid: str, st) -> list[Action]:
    """A sleeping, event-waiting or approval-waiting step after a restart: its timer, its
    watch for the event, its approval request when the token was not yet recorded."""
    step = plan(defn).steps.get(sid)
    kind = _GATE_TIMER.get(step.type) if step is not None else None
    if kind is None:
        return []
    out: list[Action] = [SetTimer(st.due_at, kind, sid)]
    if isinstance(st.detail, EventWait):
        out.append(AwaitEvent(sid, st.detail))
    elif isinstance(st.detail, ApprovalGate) and not st.detail.token:
        out.append(RequestApproval(sid, st.detail, st.due_at))
    return out


_NO_OUTBOX: dict = {}  # shared by compacted runs; advance copies before writing


def compact(state: RunState) -> RunState:
    """A finished run without what only an unfinished run needs: step inputs and outputs
    (the run's own output stays), map outputs. Cuts a finished ten-step run from ~6 KB to
    ~2 KB of memory; statuses, attempts, times and errors stay for views. A failed run is
    kept whole: a dead-letter replay may resume it."""
    if state.status != RUN_COMPLETED and state.status != RUN_CANCELLED:
        return state  # running, or failed
    if state.outbox is _NO_OUTBOX:  # compacted already
        return state
    out = state.clone()
    out.steps = {}
    for sid, st in state.steps.items():
        lean = st.clone()
        lean.input = lean.output = None
        if st.map is not None:
            lean.map = MapState(st.map.count, [], st.map.next_index, st.map.done)
        out.steps[sid] = lean
    if not state.outbox:
        out.outbox = _NO_OUTBOX
    return out


def replay(defn: WorkflowDef, events: Iterable[Event]) -> RunState | None:
    """Fold a run's events into its state, dropping actions (for tests and tools)."""
    state: RunState | None = None
    for e in events:
        if state is None:
            if e.type != WORKFLOW_STARTED:
                continue
            state, _ = start(defn, e)
            continue
        state, _ = advance(defn, state, e)
    return state
