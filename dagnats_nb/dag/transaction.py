"""One application of an event to a run (`Transaction`): the copy-on-write state and the
decisions the core takes on it: schedule ready steps within the run's limits, dispatch a
step or map instance, retry, skip, complete or fail a step, end the run. Each decision
is written to the history as an event, and waits in the run's outbox until it comes back.
"""

from __future__ import annotations

from typing import Any

from .events import (
    AGENT_LOOP_ITERATION,
    COMPENSATE_COMPLETED,
    COMPENSATE_FAILED,
    COMPENSATE_STEP_COMPLETED,
    MAP_COMPLETED,
    MAP_STARTED,
    NON_RETRIABLE,
    RETRY_AFTER,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_QUEUED,
    STEP_SKIPPED,
    WORKFLOW_COMPLETED,
    WORKFLOW_FAILED,
    Event,
    TaskPayload,
    dumps,
    format_time,
)
from .gates import (
    WAITING_TYPES,
)
from .model import StepDef, WorkflowDef
from .nonworker import WithoutWorker
from .plan import plan, resolve_input, run_output
from .saga import Saga
from .state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    QUEUED,
    RETRYING,
    RUN_COMPLETED,
    RUN_FAILED,
    RUNNING,
    SKIPPED,
    STEP_ACTIVE,
    STEP_DONE,
    STEP_TERMINAL,
    WAITING,
    Action,
    CancelChild,
    DeadLetter,
    Dispatch,
    Failure,
    Instance,
    MapState,
    Publish,
    RunEnded,
    RunState,
    StepState,
)

CONTROL_PLANE = "control-plane"  # Go grants it per workflow; we never do (Go's default)


def needed(step: StepDef) -> list[str]:
    """The capabilities a worker needs to take the step's tasks (Go strips
    ``control-plane`` unless the workflow is granted it)."""
    return [c for c in step.required_capabilities or () if c != CONTROL_PLANE]


class Transaction(WithoutWorker, Saga):
    """One application of an event: copy-on-write state plus the actions decided.

    The decisions live here; how each kind of event leads to them is `fold.Fold`."""

    def __init__(self, defn: WorkflowDef, state: RunState, now: float) -> None:
        if state.extended is not None:  # a planner added steps to this run
            defn = state.extended
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

    def event(
        self,
        type_: str,
        step_id: str = "",
        payload: Any = None,
        attempt: int = 0,
        map_index: int | None = None,
        iteration: int | None = None,
    ) -> Event:
        return Event(
            type=type_,
            run_id=self.state.run_id,
            timestamp=format_time(self.now),
            step_id=step_id,
            payload=payload,
            attempt_number=attempt,
            map_index=map_index,
            iteration=iteration,
        )

    def finish(self, event: Event) -> tuple[RunState, list[Action]]:
        s = self.state
        if event.msg_id in s.outbox:
            del self.outbox()[event.msg_id]
        if event.seq:
            s.last_seq = event.seq
        s.event_count += 1
        return s, self.actions

    # -- decisions ---------------------------------------------------------------------

    def retry_delay(self, step_id: str, attempt: int, kind: str, payload: dict) -> float | None:
        """Seconds until the next attempt, or None when the step has failed for good."""
        if kind == NON_RETRIABLE:
            return None
        policy = self.defn.retry_policy(step_id)
        if policy is None or attempt > policy.max_attempts:
            return None
        if kind == RETRY_AFTER and payload.get("retry_after_ms") is not None:
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
        """Pending, and every step it depends on completed or skipped (on every event of
        every run: plain loops, no generator)."""
        steps = self.state.steps
        st = steps.get(step_id)
        if st is not None and st.status != PENDING:
            return False
        for d in self.plan.deps[step_id]:
            dep = steps.get(d)
            if dep is None or dep.status not in STEP_DONE:
                return False
        return True

    def schedule(self) -> None:
        """Dispatch or skip every ready step (within ``max_steps``); finish the run if done."""
        s = self.state
        if s.terminal or (s.failure is not None and s.failure.saga):
            return  # compensating: nothing new starts
        progressed = True
        while progressed:
            progressed = False
            for sid in self.plan.scheduled:
                if not self.ready(sid):
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
        if step.type in WAITING_TYPES:
            self.start_gate(step, value)
            return
        if step.type == "sub_workflow":
            self.start_child(step, value)
            return
        if step.type == "respond":
            self.respond(step, value)
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
        self.publish(self.event(MAP_STARTED, step.id, {"count": len(items)}))
        if not items:
            self.complete_step(step.id, [], publish=False)
            self.publish(self.event(MAP_COMPLETED, step.id, {"count": 0}))

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
        queued = self.event(STEP_QUEUED, step_id, None, attempt, idx, task.iteration)
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
            iteration=iteration if step_id in self.plan.loops else None,
            map_index=idx,
            timeout_s=step.timeout.total_seconds() if step.timeout else None,
            metadata=dict(step.metadata or {}),
            def_hash=self.state.def_hash,
            group=step.worker_group or "",
            required_capabilities=needed(step),
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
            self.publish(self.event(MAP_COMPLETED, step_id, {"count": st.map.count}))
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
            if stopped:
                why = {"iteration": st.iteration, "stopped": stopped}
                self.publish(self.event(AGENT_LOOP_ITERATION, step_id, why))
            self.publish(self.event(STEP_COMPLETED, step_id, output, iteration=st.iteration))
        failure = self.state.failure
        if step_id in self.plan.handlers and failure is not None:
            if not self._compensating(step_id):
                self.end_run(RUN_FAILED, error=failure.error)
                return
            self.publish(self.event(COMPENSATE_STEP_COMPLETED, step_id, {"step": step_id}))
            if failure.undo:
                self.next_compensation()
                return
            self.publish(
                self.event(COMPENSATE_COMPLETED, payload={"trigger_step": failure.step_id})
            )
            self.end_run(RUN_FAILED, error=f"{failure.error} (compensated)")

    def skip(self, step_id: str, reason: str) -> None:
        st = self.st(step_id)
        st.status, st.ended_at = SKIPPED, self.now
        self.publish(self.event(STEP_SKIPPED, step_id, {"reason": reason}))

    def fail_step(
        self,
        step_id: str,
        error: str,
        attempts: int,
        idx: int | None = None,
        *,
        announce: bool = True,
    ) -> None:
        """A step failed for good: its dead letter (a worker's task), its handler, or the run
        fails. ``announce`` False: no ``step.failed`` of ours (a waiting step's failure is
        the gate's own event, ``approval.rejected`` say, then ``workflow.failed``, as Go)."""
        st = self.st(step_id)
        st.status, st.error, st.ended_at, st.due_at = FAILED, error, self.now, None
        step = self.plan.steps[step_id]
        if attempts > 0:
            value = st.input[idx] if idx is not None else st.input
            task = self.task(step_id, value, attempts, st.iteration, idx)
            self.actions.append(DeadLetter(task, error, attempts))
        message = f"step '{step_id}' failed: {error}"
        if attempts == 0 and announce:  # decided by the core, not reported by a worker
            payload = {"error": error, "failure_type": NON_RETRIABLE}
            self.publish(self.event(STEP_FAILED, step_id, payload))
        handler = step.on_failure
        if handler and self.state.failure is None and self.state.step(handler).status == PENDING:
            self.state.failure = Failure(step_id, message)
            h = self.st(handler)
            h.input = {"step_id": step_id, "error": error, "input": st.input}
            h.first_at = self.now
            self.dispatch(handler, attempt=1, iteration=0)
            return
        failure = self.state.failure
        if step_id in self.plan.handlers and failure is not None:
            what = "compensate" if failure.undo or self._compensating(step_id) else "on_failure"
            message = f"{failure.error}; {what} step '{step_id}' failed: {error}"
            if what == "compensate":
                payload = {"step": step_id, "error": error, "trigger_step": failure.step_id}
                self.publish(self.event(COMPENSATE_FAILED, payload=payload))
        elif failure is None and self.start_compensation(step_id, error, message):
            return
        elif failure is not None and failure.saga:
            return  # another step failing meanwhile: the compensation goes on
        self.end_run(RUN_FAILED, error=message)

    def maybe_finish(self) -> None:
        s = self.state
        if s.terminal or s.failure is not None:
            return
        steps = s.steps
        for sid in self.plan.scheduled:
            st = steps.get(sid)
            if st is None or st.status not in STEP_DONE:
                return
        self.end_run(RUN_COMPLETED, output=run_output(self.defn, s))

    def end_run(
        self, status: str, *, output: Any = None, error: str | None = None, publish: bool = True
    ) -> None:
        s = self.state
        s.status, s.ended_at, s.output, s.error = status, self.now, output, error
        for sid, cur in s.steps.items():
            if cur.status not in STEP_TERMINAL:
                if cur.status == RUNNING and self.plan.steps[sid].type == "sub_workflow":
                    why = f"its parent run {s.run_id} ended {status}"
                    self.actions.append(CancelChild(str(cur.detail), why))
                st = self.st(sid)
                st.status, st.due_at = CANCELLED, None
        # Tasks decided earlier in this transaction are for steps just cancelled.
        for a in [a for a in self.actions if isinstance(a, Dispatch)]:
            self.actions.remove(a)
            del self.outbox()[a.queued.msg_id]
        if publish:
            type_ = {
                RUN_COMPLETED: WORKFLOW_COMPLETED,
                RUN_FAILED: WORKFLOW_FAILED,
            }[status]
            if status == RUN_COMPLETED:
                payload = {"output": output} if _small(output) else {"output_steps": True}
            else:
                payload = {"error": error}
            self.publish(self.event(type_, payload=payload, attempt=s.reopened))
        self.actions.append(RunEnded(status))


SMALL_OUTPUT = 4096


def _small(value: Any) -> bool:
    """Whether a run's output is small enough to repeat in its workflow.completed event
    (a large one is already stored once, in its steps' events)."""
    return len(dumps(value)) <= SMALL_OUTPUT
