"""What happens next in a run: ``advance(definition, state, event) -> (state, actions)``.

Pure: no I/O, no clock (time comes from the event). The input state is never mutated;
changed step states are copied. The same function serves live processing and replay: on
replay the shell applies events and drops the actions, then asks :func:`resume` for what is
still outstanding (undelivered decisions, timers).

Decisions the core makes itself (skip a step, finish a run, dispatch a task) are also
written to the history as events; until such an event comes back it waits in
``state.outbox`` so a crash between deciding and publishing loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import events as ev
from .events import Event, TaskPayload, dumps, format_time
from .model import AgentLoopConfig, MapConfig, StepDef, WorkflowDef
from .state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    QUEUED,
    RETRYING,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_RUNNING,
    RUNNING,
    SKIPPED,
    STEP_ACTIVE,
    STEP_DONE,
    STEP_TERMINAL,
    WAITING,
    Action,
    DeadLetter,
    Dispatch,
    Failure,
    Instance,
    MapState,
    Publish,
    RunEnded,
    RunState,
    SetTimer,
    StepState,
    Timer,
)

LOOP_MAX_ITERATIONS_STOP = "max_iterations"
LOOP_MAX_DURATION_STOP = "max_duration"


@dataclass(frozen=True, slots=True)
class Plan:
    """Facts about a definition that every event needs, computed once."""

    order: tuple[str, ...]
    steps: dict[str, StepDef]
    deps: dict[str, tuple[str, ...]]
    handlers: frozenset[str]  # on_failure / compensate targets: never scheduled by the DAG
    terminals: tuple[str, ...]
    max_steps: int  # 0 = unlimited
    maps: dict[str, MapConfig]
    loops: dict[str, AgentLoopConfig | None]


_plans: dict[int, tuple[WorkflowDef, Plan]] = {}


def plan(defn: WorkflowDef) -> Plan:
    hit = _plans.get(id(defn))
    if hit is not None and hit[0] is defn:
        return hit[1]
    p = Plan(
        order=tuple(defn.topological_order),
        steps={s.id: s for s in defn.steps},
        deps={s.id: tuple(s.depends_on) for s in defn.steps},
        handlers=frozenset(defn.handler_steps),
        terminals=tuple(defn.terminal_steps),
        max_steps=(defn.concurrency.max_steps or 0) if defn.concurrency else 0,
        maps={s.id: s.map_config for s in defn.steps if s.type == "map"},
        loops={s.id: s.loop_config for s in defn.steps if s.type == "agent_loop"},
    )
    if len(_plans) > 1024:
        _plans.clear()
    _plans[id(defn)] = (defn, p)
    return p


def start(defn: WorkflowDef, event: Event) -> tuple[RunState, list[Action]]:
    """The state of a new run from its ``workflow.started`` event."""
    payload = event.payload or {}
    state = RunState(
        run_id=event.run_id,
        workflow=defn.name,
        version=defn.version,
        def_hash=payload.get("def_hash", ""),
        input=payload.get("input"),
        started_at=event.time,
    )
    tx = _Tx(defn, state, event.time)
    if defn.timeout:
        tx.actions.append(SetTimer(state.started_at + defn.timeout.total_seconds(), "run_timeout"))
    tx.schedule()
    return tx.finish(event)


def advance(
    defn: WorkflowDef, state: RunState, event: Event | Timer
) -> tuple[RunState, list[Action]]:
    """Apply one event (or timer) to a run; return the new state and the actions to take."""
    if isinstance(event, Timer):
        tx = _Tx(defn, state, event.at)
        tx.on_timer(event)
        return tx.state, tx.actions
    tx = _Tx(defn, state, event.time)
    tx.on_event(event)
    return tx.finish(event)


def resume(defn: WorkflowDef, state: RunState) -> list[Action]:
    """What a run still needs after replay: undelivered decisions and pending timers."""
    actions: list[Action] = []
    for event, task in state.outbox.values():
        if task is not None and state.terminal:
            continue  # a finished run dispatches no more work
        actions.append(Dispatch(task, event) if task is not None else Publish(event))
    if state.terminal:
        return actions
    if defn.timeout:
        since = state.resumed_at or state.started_at
        deadline = since + defn.timeout.total_seconds()
        actions.append(SetTimer(deadline, "run_timeout", seqno=state.reopened))
    for sid, st in state.steps.items():
        if st.status == RETRYING and st.due_at is not None:
            actions.append(SetTimer(st.due_at, "retry", sid, None, st.attempt))
        elif st.status == WAITING and st.due_at is not None:
            actions.append(SetTimer(st.due_at, "loop", sid, None, st.iteration + 1))
        if st.map is not None:
            for idx, inst in st.map.active.items():
                if inst.status == RETRYING and inst.due_at is not None:
                    actions.append(SetTimer(inst.due_at, "retry", sid, idx, inst.attempt))
    return actions


def resolve_input(defn: WorkflowDef, state: RunState, step_id: str) -> Any:
    """A step's input (WIRE.md): run input, the single parent's output, or ``{parent: output}``."""
    deps = plan(defn).deps[step_id]
    if not deps:
        return state.input
    if len(deps) == 1:
        return state.step(deps[0]).output
    return {d: state.step(d).output for d in deps}


def run_output(defn: WorkflowDef, state: RunState) -> Any:
    terminals = plan(defn).terminals
    if len(terminals) == 1:
        return state.step(terminals[0]).output
    return {t: state.step(t).output for t in terminals}


class _Tx:
    """One application of an event: copy-on-write state plus the actions decided."""

    def __init__(self, defn: WorkflowDef, state: RunState, now: float) -> None:
        self.defn = defn
        self.plan = plan(defn)
        self.now = now
        self.state = state.clone()
        self.state.steps = dict(state.steps)
        self._owned: set[str] = set()
        self._owned_instances: set[tuple[str, int]] = set()
        self._outbox_copied = False
        self.actions: list[Action] = []

    # -- bookkeeping -------------------------------------------------------------------

    def st(self, step_id: str) -> StepState:
        """The step's state, copied on first write in this transaction."""
        if step_id not in self._owned:
            old = self.state.steps.get(step_id)
            new = old.clone() if old is not None else StepState()
            if new.map is not None:  # instances are cloned one by one, by ``instance``
                m = new.map.clone()
                m.outputs = list(m.outputs)
                m.active = dict(m.active)
                new.map = m
            self.state.steps[step_id] = new
            self._owned.add(step_id)
        return self.state.steps[step_id]

    def instance(self, step_id: str, idx: int) -> Instance:
        """A map instance's state, copied on first write in this transaction."""
        key = (step_id, idx)
        active = self.st(step_id).map.active
        if key not in self._owned_instances:
            active[idx] = active[idx].clone()
            self._owned_instances.add(key)
        return active[idx]

    def outbox(self) -> dict:
        if not self._outbox_copied:
            self.state.outbox = dict(self.state.outbox)
            self._outbox_copied = True
        return self.state.outbox

    def publish(self, event: Event, task: TaskPayload | None = None) -> None:
        self.outbox()[event.msg_id] = (event, task)
        self.actions.append(Dispatch(task, event) if task is not None else Publish(event))

    def event(self, type_: str, step_id: str = "", payload: dict | None = None, attempt: int = 0):
        return Event(
            type=type_,
            run_id=self.state.run_id,
            timestamp=format_time(self.now),
            step_id=step_id,
            payload=payload,
            attempt_number=attempt,
        )

    def finish(self, event: Event) -> tuple[RunState, list[Action]]:
        s = self.state
        if event.msg_id in s.outbox:
            del self.outbox()[event.msg_id]
        if event.seq:
            s.last_seq = event.seq
        s.event_count += 1
        return s, self.actions

    # -- events ------------------------------------------------------------------------

    def on_event(self, e: Event) -> None:
        s = self.state
        t = e.type
        if t in ev.RUN_TERMINAL_EVENTS:
            self.on_run_terminal(e)
            return
        if t == ev.STEP_REPLAYED:
            self.on_replayed(e)
            return
        if s.terminal or not e.step_id or e.step_id not in self.plan.deps:
            return
        if t == ev.STEP_QUEUED:
            self.on_queued(e)
        elif t == ev.STEP_STARTED:
            self.on_started(e)
        elif t in (ev.STEP_COMPLETED, ev.MAP_INSTANCE_COMPLETED):
            self.on_completed(e)
        elif t == ev.STEP_FAILED:
            self.on_failed(e)
        elif t == ev.STEP_CONTINUE:
            self.on_continue(e)
        # step.skipped, step.map.started, step.map.completed: decisions already applied.

    def on_run_terminal(self, e: Event) -> None:
        s = self.state
        if s.terminal:
            return
        payload = e.payload or {}
        if e.type == ev.WORKFLOW_CANCELLED:
            self.end_run(RUN_CANCELLED, error=payload.get("reason") or "cancelled", publish=False)
        elif e.type == ev.WORKFLOW_FAILED:
            self.end_run(RUN_FAILED, error=payload.get("error", "failed"), publish=False)
        else:
            output = payload["output"] if "output" in payload else run_output(self.defn, s)
            self.end_run(RUN_COMPLETED, output=output, publish=False)

    def on_queued(self, e: Event) -> None:
        if self.catch_up(e) or e.map_index is not None:
            return
        cur = self.state.step(e.step_id)
        if cur.status == PENDING:
            # Dispatched by a run whose decision event we never saw: accept it.
            st = self.st(e.step_id)
            st.status, st.attempt, st.iteration = QUEUED, e.attempt_number, e.iteration or 0
            st.queued_at = st.first_at = self.now
            st.input = resolve_input(self.defn, self.state, e.step_id)

    def catch_up(self, e: Event) -> bool:
        """Apply a timer's decision (retry, loop) this state has not seen; True if it did.

        A timer is not an event: its step.queued event carries the decision. A worker's
        report on the new attempt or iteration proves it too, and can come first: the task
        is stored before its step.queued event, and a crash in between loses the latter.
        """
        idx = e.map_index
        if idx is not None:
            m = self.state.step(e.step_id).map
            inst = m.active.get(idx) if m else None
            if inst is not None and inst.status == RETRYING and e.attempt_number > inst.attempt:
                inst = self.instance(e.step_id, idx)
                inst.status, inst.attempt, inst.due_at = QUEUED, e.attempt_number, None
                return True
            return False
        cur = self.state.step(e.step_id)
        newer = (e.iteration or 0, e.attempt_number) > (cur.iteration, cur.attempt)
        if cur.status not in (RETRYING, WAITING) or not newer:
            return False
        st = self.st(e.step_id)
        if cur.status == WAITING:
            st.input = st.output
            st.output = None
        st.status, st.attempt, st.iteration = QUEUED, e.attempt_number, e.iteration or 0
        st.due_at, st.queued_at = None, self.now
        return True

    def on_started(self, e: Event) -> None:
        self.catch_up(e)
        cur = self.state.step(e.step_id)
        idx = e.map_index
        if idx is not None:
            inst = cur.map.active.get(idx) if cur.map else None
            if inst is not None and inst.status == QUEUED and e.attempt_number == inst.attempt:
                self.instance(e.step_id, idx).status = RUNNING
            if cur.status == QUEUED:
                self.st(e.step_id).status = RUNNING
            return
        same = e.attempt_number in (0, cur.attempt) and (e.iteration or 0) == cur.iteration
        if cur.status in (QUEUED, PENDING) and same:
            st = self.st(e.step_id)
            st.status = RUNNING
            st.started_at = self.now
            st.worker_id = e.worker_id

    def on_completed(self, e: Event) -> None:
        self.catch_up(e)
        cur = self.state.step(e.step_id)
        if cur.status in STEP_TERMINAL:
            return  # a duplicate delivery: applied once
        output = (e.payload or {}).get("output")
        self.bind(e.worker_id)
        idx = e.map_index
        if idx is not None:
            self.instance_completed(e.step_id, idx, output)
            return
        if (e.iteration or 0) != cur.iteration:
            return  # an earlier loop iteration's late report (its attempt is 1 again)
        self.complete_step(e.step_id, output, worker_id=e.worker_id)
        self.schedule()

    def bind(self, worker_id: str) -> None:
        """Sticky workflows: the first worker to complete a step takes the run's later tasks."""
        if self.defn.sticky and worker_id and not self.state.bound_worker:
            self.state.bound_worker = worker_id

    def on_replayed(self, e: Event) -> None:
        """A dead letter replayed: a failed run resumes at its failed step (a new attempt),
        and the steps its failure cancelled in flight are dispatched again. Anything else
        (the run completed, the step not failed, a second replay) is a no-op."""
        s = self.state
        cur = s.step(e.step_id)
        if s.status != RUN_FAILED or cur.status != FAILED or e.step_id not in self.plan.deps:
            return
        s.status, s.ended_at, s.error, s.output = RUN_RUNNING, None, None, None
        s.reopened += 1
        s.resumed_at = self.now
        if e.step_id not in self.plan.handlers:
            s.failure = None  # a replayed on_failure handler still ends the run failed
        if self.defn.timeout:
            deadline = self.now + self.defn.timeout.total_seconds()
            self.actions.append(SetTimer(deadline, "run_timeout", seqno=s.reopened))
        for sid, step in list(s.steps.items()):
            if sid == e.step_id or step.status == CANCELLED:
                self.reopen_step(sid)
        self.schedule()

    def reopen_step(self, step_id: str) -> None:
        cur = self.state.step(step_id)
        if cur.attempt == 0 and cur.map is None:  # never dispatched: pending again
            del self.state.steps[step_id]
            self._owned.discard(step_id)
            return
        st = self.st(step_id)
        st.error, st.ended_at = None, None
        if st.map is None:
            self.dispatch(step_id, cur.attempt + 1, cur.iteration)
            return
        st.status = QUEUED
        for idx, inst in list(st.map.active.items()):
            self.dispatch_instance(step_id, idx, inst.attempt + 1)

    def on_failed(self, e: Event) -> None:
        self.catch_up(e)
        cur = self.state.step(e.step_id)
        if cur.status in STEP_TERMINAL:
            return
        payload = e.payload or {}
        error = str(payload.get("error") or "failed")
        kind = payload.get("failure_type", ev.RETRIABLE)
        idx = e.map_index
        if idx is not None:
            inst = cur.map.active.get(idx) if cur.map else None
            if inst is None or inst.status == RETRYING or e.attempt_number not in (0, inst.attempt):
                return
            delay = self.retry_delay(e.step_id, inst.attempt, kind, payload)
            if delay is None:
                self.fail_step(e.step_id, f"item {idx}: {error}", inst.attempt, idx)
                return
            inst = self.instance(e.step_id, idx)
            inst.status, inst.due_at = RETRYING, self.now + delay
            self.actions.append(SetTimer(inst.due_at, "retry", e.step_id, idx, inst.attempt))
            return
        stale = e.attempt_number not in (0, cur.attempt) or (e.iteration or 0) != cur.iteration
        if cur.status == RETRYING or stale:
            return  # stale: an earlier attempt's (or loop iteration's) late report
        delay = self.retry_delay(e.step_id, cur.attempt, kind, payload)
        if delay is None:
            self.fail_step(e.step_id, error, cur.attempt)
            return
        st = self.st(e.step_id)
        st.status, st.error, st.due_at = RETRYING, error, self.now + delay
        self.actions.append(SetTimer(st.due_at, "retry", e.step_id, None, st.attempt))

    def on_continue(self, e: Event) -> None:
        self.catch_up(e)
        cur = self.state.step(e.step_id)
        if cur.status in STEP_TERMINAL or cur.status == WAITING:
            return
        if (e.iteration or 0) != cur.iteration:
            return
        loop = self.plan.loops.get(e.step_id)
        output = (e.payload or {}).get("output")
        nxt = cur.iteration + 1
        stop = None
        if loop is None or nxt >= loop.max_iterations:
            stop = LOOP_MAX_ITERATIONS_STOP
        elif loop.max_duration and self.now - (cur.first_at or self.now) >= (
            loop.max_duration.total_seconds()
        ):
            stop = LOOP_MAX_DURATION_STOP
        if stop is not None:
            self.complete_step(e.step_id, output, stopped=stop, publish=True)
            self.schedule()
            return
        st = self.st(e.step_id)
        st.output = output
        delay = loop.loop_delay.total_seconds() if loop.loop_delay else 0.0
        if delay > 0:
            st.status, st.due_at = WAITING, self.now + delay
            self.actions.append(SetTimer(st.due_at, "loop", e.step_id, None, nxt))
        else:
            st.input, st.output = output, None
            self.dispatch(e.step_id, attempt=1, iteration=nxt)

    def on_timer(self, t: Timer) -> None:
        """Publish the timer's decision and leave the state alone: a timer is not an event,
        so the state changes when the decision's event comes back (``catch_up``,
        ``on_run_terminal``), in the same place in the history as on replay."""
        s = self.state
        if s.terminal:
            return
        if t.kind == "run_timeout":
            if t.seqno != s.reopened:
                return  # the deadline of the run before a replay reopened it
            timeout = self.defn.timeout.total_seconds() if self.defn.timeout else 0
            error = f"workflow '{s.workflow}' timed out after {timeout:g}s"
            payload = {"error": error}
            self.publish(self.event(ev.WORKFLOW_FAILED, payload=payload, attempt=s.reopened))
            return
        cur = s.step(t.step_id)
        if t.kind == "loop" and cur.status == WAITING and cur.iteration + 1 == t.seqno:
            self.publish_task(t.step_id, cur.output, 1, t.seqno)
        elif t.kind == "retry" and t.map_index is None:
            if cur.status == RETRYING and cur.attempt == t.seqno:
                self.publish_task(t.step_id, cur.input, cur.attempt + 1, cur.iteration)
        elif t.kind == "retry" and cur.map is not None:
            inst = cur.map.active.get(t.map_index)
            if inst is not None and inst.status == RETRYING and inst.attempt == t.seqno:
                value = cur.input[t.map_index]
                self.publish_task(t.step_id, value, inst.attempt + 1, 0, t.map_index)

    # -- decisions ---------------------------------------------------------------------

    def retry_delay(self, step_id: str, attempt: int, kind: str, payload: dict) -> float | None:
        """Seconds until the next attempt, or None when the step has failed for good."""
        if kind == ev.NON_RETRIABLE:
            return None
        policy = self.defn.retry_policy(step_id)
        if policy is None or attempt > policy.max_attempts:
            return None
        if kind == ev.RETRY_AFTER and payload.get("retry_after_ms") is not None:
            return max(0.0, float(payload["retry_after_ms"]) / 1000.0)
        return policy.delay(attempt).total_seconds()

    def active_count(self) -> int:
        """Slots in use: a step (or map instance) waiting for its retry or its loop delay
        keeps its slot, since its timer dispatches it again without asking."""
        n = 0
        for st in self.state.steps.values():
            if st.map is not None and st.status in STEP_ACTIVE:
                n += len(st.map.active)
            elif st.status in STEP_ACTIVE or st.status in (RETRYING, WAITING):
                n += 1
        return n

    def free_slots(self) -> int:
        if not self.plan.max_steps:
            return 1 << 30
        return max(0, self.plan.max_steps - self.active_count())

    def ready(self, step_id: str) -> bool:
        s = self.state
        return s.step(step_id).status == PENDING and all(
            s.step(d).status in STEP_DONE for d in self.plan.deps[step_id]
        )

    def schedule(self) -> None:
        """Dispatch or skip every ready step (within ``max_steps``); finish the run if done."""
        s = self.state
        if s.terminal:
            return
        progressed = True
        while progressed:
            progressed = False
            for sid in self.plan.order:
                if sid in self.plan.handlers or not self.ready(sid):
                    continue
                step = self.plan.steps[sid]
                cond = step.skip_if
                if cond is not None and cond.matches(s.step(cond.step_id).output):
                    self.skip(sid, f"{cond.field} {cond.op} {cond.value!r}")
                    progressed = True
                    continue
                if self.free_slots() <= 0:
                    break
                self.start_step(step)
                if s.terminal:  # a map step that cannot start failed the run
                    return
        self.fill_maps()
        self.maybe_finish()

    def start_step(self, step: StepDef) -> None:
        value = resolve_input(self.defn, self.state, step.id)
        if step.type == "map":
            self.start_map(step, value)
            return
        st = self.st(step.id)
        st.input = value
        st.first_at = self.now
        self.dispatch(step.id, attempt=1, iteration=0)

    def start_map(self, step: StepDef, items: Any) -> None:
        st = self.st(step.id)
        st.first_at = self.now
        st.input = items
        cfg = self.plan.maps[step.id]
        if not isinstance(items, list):
            kind = type(items).__name__
            self.fail_step(step.id, f"map step '{step.id}' needs an array input, got {kind}", 0)
            return
        if len(items) > cfg.max_items:
            msg = (
                f"map step '{step.id}' got {len(items)} items, more than max_items {cfg.max_items}"
            )
            self.fail_step(step.id, msg, 0)
            return
        st.status = QUEUED
        st.map = MapState(count=len(items), outputs=[None] * len(items))
        self.publish(self.event(ev.MAP_STARTED, step.id, {"count": len(items)}))
        if not items:
            self.complete_step(step.id, [], publish=False)
            self.publish(self.event(ev.MAP_COMPLETED, step.id, {"count": 0}))

    def fill_maps(self) -> None:
        for sid, cur in list(self.state.steps.items()):
            m = cur.map
            if m is None or cur.status not in STEP_ACTIVE or m.next_index >= m.count:
                continue
            limit = self.plan.maps[sid].concurrency or (1 << 30)
            st = self.st(sid)
            while st.map.next_index < st.map.count and len(st.map.active) < limit:
                if self.free_slots() <= 0:
                    return
                idx = st.map.next_index
                st.map.next_index += 1
                self.dispatch_instance(sid, idx, 1)

    def dispatch(self, step_id: str, attempt: int, iteration: int) -> None:
        st = self.st(step_id)
        st.status, st.attempt, st.iteration = QUEUED, attempt, iteration
        st.due_at, st.queued_at, st.error = None, self.now, None
        if st.first_at is None:
            st.first_at = self.now
        self.publish_task(step_id, st.input, attempt, iteration)

    def dispatch_instance(self, step_id: str, idx: int, attempt: int) -> None:
        st = self.st(step_id)
        st.map.active[idx] = Instance(status=QUEUED, attempt=attempt)
        self._owned_instances.add((step_id, idx))
        self.publish_task(step_id, st.input[idx], attempt, 0, idx)

    def publish_task(
        self, step_id: str, value: Any, attempt: int, iteration: int, idx: int | None = None
    ) -> None:
        """Dispatch a task and its step.queued event (the state is the caller's business)."""
        task = self.task(step_id, value, attempt, iteration, idx)
        if idx is not None:
            payload: dict[str, Any] | None = {"map_index": idx}
        else:
            payload = {"iteration": iteration} if iteration else None
        queued = self.event(ev.STEP_QUEUED, step_id, payload, attempt)
        if queued.msg_id not in self.state.outbox:  # a timer that fires twice
            self.publish(queued, task)

    def task(
        self, step_id: str, value: Any, attempt: int, iteration: int, idx: int | None = None
    ) -> TaskPayload:
        step = self.plan.steps[step_id]
        return TaskPayload(
            run_id=self.state.run_id,
            step_id=step_id,
            task=step.task or "",
            input=value,
            workflow_name=self.defn.name,
            attempt=attempt,
            iteration=iteration,
            map_index=idx,
            timeout_s=step.timeout.total_seconds() if step.timeout else None,
            metadata=dict(step.metadata or {}),
            def_hash=self.state.def_hash,
        )

    def instance_completed(self, step_id: str, idx: int, output: Any) -> None:
        cur = self.state.step(step_id)
        if cur.map is None or idx not in cur.map.active:
            return
        st = self.st(step_id)
        del st.map.active[idx]
        st.map.outputs[idx] = output
        st.map.done += 1
        if st.map.done == st.map.count:
            self.complete_step(step_id, st.map.outputs, publish=False)
            self.publish(self.event(ev.MAP_COMPLETED, step_id, {"count": st.map.count}))
        self.schedule()

    def complete_step(
        self,
        step_id: str,
        output: Any,
        *,
        worker_id: str = "",
        stopped: str | None = None,
        publish: bool = False,
    ) -> None:
        st = self.st(step_id)
        st.status, st.output, st.ended_at, st.due_at = COMPLETED, output, self.now, None
        if worker_id:
            st.worker_id = worker_id
        if publish:
            payload: dict[str, Any] = {"output": output}
            if stopped:
                payload["stopped"] = stopped
                payload["iteration"] = st.iteration
            self.publish(self.event(ev.STEP_COMPLETED, step_id, payload))
        if step_id in self.plan.handlers and self.state.failure is not None:
            self.end_run(RUN_FAILED, error=self.state.failure.error)

    def skip(self, step_id: str, reason: str) -> None:
        st = self.st(step_id)
        st.status, st.ended_at = SKIPPED, self.now
        self.publish(self.event(ev.STEP_SKIPPED, step_id, {"reason": reason}))

    def fail_step(self, step_id: str, error: str, attempts: int, idx: int | None = None) -> None:
        st = self.st(step_id)
        st.status, st.error, st.ended_at, st.due_at = FAILED, error, self.now, None
        step = self.plan.steps[step_id]
        if attempts > 0:
            value = st.input[idx] if idx is not None else st.input
            task = self.task(step_id, value, attempts, st.iteration, idx)
            self.actions.append(DeadLetter(task, error, attempts))
        message = f"step '{step_id}' failed: {error}"
        if attempts == 0:  # decided by the core, not reported by a worker
            payload = {"error": error, "failure_type": ev.NON_RETRIABLE}
            self.publish(self.event(ev.STEP_FAILED, step_id, payload))
        handler = step.on_failure
        if handler and self.state.failure is None and self.state.step(handler).status == PENDING:
            self.state.failure = Failure(step_id, message)
            h = self.st(handler)
            h.input = {"step_id": step_id, "error": error, "input": st.input}
            h.first_at = self.now
            self.dispatch(handler, attempt=1, iteration=0)
            return
        if step_id in self.plan.handlers and self.state.failure is not None:
            message = f"{self.state.failure.error}; on_failure step '{step_id}' failed: {error}"
        self.end_run(RUN_FAILED, error=message)

    def maybe_finish(self) -> None:
        s = self.state
        if s.terminal or s.failure is not None:
            return
        for sid in self.plan.order:
            if sid not in self.plan.handlers and s.step(sid).status not in STEP_DONE:
                return
        self.end_run(RUN_COMPLETED, output=run_output(self.defn, s))

    def end_run(
        self, status: str, *, output: Any = None, error: str | None = None, publish: bool = True
    ) -> None:
        s = self.state
        s.status, s.ended_at, s.output, s.error = status, self.now, output, error
        for sid, cur in s.steps.items():
            if cur.status not in STEP_TERMINAL:
                st = self.st(sid)
                st.status, st.due_at = CANCELLED, None
        # Tasks decided earlier in this transaction are for steps just cancelled.
        for a in [a for a in self.actions if isinstance(a, Dispatch)]:
            self.actions.remove(a)
            del self.outbox()[a.queued.msg_id]
        if publish:
            type_ = {
                RUN_COMPLETED: ev.WORKFLOW_COMPLETED,
                RUN_FAILED: ev.WORKFLOW_FAILED,
            }[status]
            if status == RUN_COMPLETED:
                payload = {"output": output} if _small(output) else {"output_steps": True}
            else:
                payload = {"error": error}
            self.publish(self.event(type_, payload=payload, attempt=s.reopened))
        self.actions.append(RunEnded(status))


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


SMALL_OUTPUT = 4096


def _small(value: Any) -> bool:
    """Whether a run's output is small enough to repeat in its workflow.completed event
    (a large one is already stored once, in its steps' events)."""
    return len(dumps(value)) <= SMALL_OUTPUT


def replay(defn: WorkflowDef, events: Iterable[Event]) -> RunState | None:
    """Fold a run's events into its state, dropping actions (for tests and tools)."""
    state: RunState | None = None
    for e in events:
        if state is None:
            if e.type != ev.WORKFLOW_STARTED:
                continue
            state, _ = start(defn, e)
            continue
        state, _ = advance(defn, state, e)
    return state
