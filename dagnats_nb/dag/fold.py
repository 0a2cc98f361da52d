"""How each event, or timer, folds into a run's state (`Fold`): a worker's report, a
decision coming back from the history, a dead letter replayed, a retry or loop timer
firing. What follows from it is decided by `transaction.Transaction`."""

from __future__ import annotations

from .events import (
    APPROVAL_EXPIRED,
    APPROVAL_GRANTED,
    APPROVAL_REJECTED,
    APPROVAL_REQUESTED,
    PLANNER_MATERIALIZED,
    RETRIABLE,
    RUN_TERMINAL_EVENTS,
    STEP_COMPLETED,
    STEP_CONTINUE,
    STEP_FAILED,
    STEP_QUEUED,
    STEP_REPLAYED,
    STEP_SLEEP_COMPLETED,
    STEP_STARTED,
    STEP_WAIT_MATCHED,
    STEP_WAIT_TIMEOUT,
    WORKFLOW_ADMITTED,
    WORKFLOW_CANCELLED,
    WORKFLOW_CHILD_COMPLETED,
    WORKFLOW_CHILD_FAILED,
    WORKFLOW_FAILED,
    Event,
)
from .fork import fork_payload
from .gates import ApprovalGate
from .plan import plan, resolve_input, run_output
from .planner import PlanError, extended, fragment
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
    RUN_PENDING,
    RUN_RUNNING,
    RUNNING,
    STEP_TERMINAL,
    WAITING,
    MapState,
    SetTimer,
    Timer,
)
from .transaction import Transaction

# A waiting step's end: the event that ends it -> the step type it ends.
GATE_ENDS = {
    STEP_SLEEP_COMPLETED: "sleep",
    STEP_WAIT_MATCHED: "wait_for_event",
    STEP_WAIT_TIMEOUT: "wait_for_event",
    APPROVAL_GRANTED: "approval",
    APPROVAL_REJECTED: "approval",
    APPROVAL_EXPIRED: "approval",
    WORKFLOW_CHILD_COMPLETED: "sub_workflow",
    WORKFLOW_CHILD_FAILED: "sub_workflow",
}
# A waiting step's timer -> (the step type it is for, the event it publishes).
GATE_TIMERS = {
    "sleep": ("sleep", STEP_SLEEP_COMPLETED),
    "wait_timeout": ("wait_for_event", STEP_WAIT_TIMEOUT),
    "approval_timeout": ("approval", APPROVAL_EXPIRED),
}
WAIT_TIMED_OUT = {"timeout": True}  # a wait_for_event step's output when no event came

LOOP_MAX_ITERATIONS_STOP = "max_iterations"
LOOP_MAX_DURATION_STOP = "max_duration"


class Fold(Transaction):
    """One event (``on_event``) or timer (``on_timer``) applied to a run."""

    # -- events ------------------------------------------------------------------------

    def on_fork(self, payload: object) -> None:
        """A forked run's start (``dag.fork``): the steps its ``workflow.started`` says it
        reuses are completed with the source's outputs before anything is scheduled, each
        written as a ``step.completed`` (applied once: it comes back as a duplicate). A run
        that is no fork is left alone."""
        source, reused = fork_payload(payload)
        if not reused and not source:
            return
        s = self.state
        s.forked_from = str(source.get("run_id") or "")
        s.fork_step = str(source.get("step_id") or "")
        kept = []
        for sid in self.plan.order:
            if sid not in reused or sid in self.plan.handlers:
                continue
            st = self.st(sid)
            st.status, st.output, st.ended_at = COMPLETED, reused[sid], self.now
            if self.plan.steps[sid].type == "map" and isinstance(reused[sid], list):
                n = len(reused[sid])  # its items, as views show a map step's
                st.map = MapState(n, reused[sid], n, n)
            self.publish(self.event(STEP_COMPLETED, sid, reused[sid]))
            kept.append(sid)
        s.reused = frozenset(kept)

    def on_event(self, e: Event) -> None:
        s = self.state
        t = e.type
        if t in RUN_TERMINAL_EVENTS:
            self.on_run_terminal(e)
            return
        if t == STEP_REPLAYED:
            self.on_replayed(e)
            return
        if t == WORKFLOW_ADMITTED:
            self.on_admitted()
            return
        if s.terminal or not e.step_id or e.step_id not in self.plan.deps:
            return
        if t == STEP_QUEUED:
            self.on_queued(e)
        elif t == STEP_STARTED:
            self.on_started(e)
        elif t == STEP_COMPLETED:
            self.on_completed(e)
        elif t == STEP_FAILED:
            self.on_failed(e)
        elif t == STEP_CONTINUE:
            self.on_continue(e)
        elif t in GATE_ENDS:
            self.on_gate_end(e)
        elif t == APPROVAL_REQUESTED:
            self.on_approval_requested(e)
        # step.skipped, step.map.started, step.map.completed: decisions already applied.

    def on_run_terminal(self, e: Event) -> None:
        s = self.state
        if s.terminal:
            return
        payload = e.payload if isinstance(e.payload, dict) else {}
        if e.type == WORKFLOW_CANCELLED:
            self.end_run(RUN_CANCELLED, error=payload.get("reason") or "cancelled", publish=False)
        elif e.type == WORKFLOW_FAILED:
            self.end_run(RUN_FAILED, error=payload.get("error", "failed"), publish=False)
        else:
            output = payload["output"] if "output" in payload else run_output(self.defn, s)
            self.end_run(RUN_COMPLETED, output=output, publish=False)

    def on_admitted(self) -> None:
        """A slot of ``max_runs`` is the run's: it starts now (its timeout counts from now)."""
        s = self.state
        if s.status != RUN_PENDING:
            return  # admitted twice (a restart right after): once
        s.status, s.resumed_at = RUN_RUNNING, self.now
        if self.defn.timeout:
            deadline = self.now + self.defn.timeout.total_seconds()
            self.actions.append(SetTimer(deadline, "run_timeout", seqno=s.reopened))
        self.schedule()

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
        iteration = cur.iteration if e.iteration is None else e.iteration
        newer = (iteration, e.attempt_number) > (cur.iteration, cur.attempt)
        if cur.status not in (RETRYING, WAITING) or not newer:
            return False
        st = self.st(e.step_id)
        if cur.status == WAITING:
            st.input = st.output
            st.output = None
        st.status, st.attempt, st.iteration = QUEUED, e.attempt_number, iteration
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
        same = e.attempt_number in (0, cur.attempt) and e.iteration in (None, cur.iteration)
        if cur.status in (QUEUED, PENDING) and same:
            st = self.st(e.step_id)
            st.status = RUNNING
            st.started_at = self.now
            st.worker_id = e.worker_id

    def count_cached(self, step_id: str) -> None:
        """One more result of ``step_id`` served from the step cache (a new dict: clones
        share the old one; a few entries, so a map of many hits stays linear)."""
        cached = self.state.cached or {}
        self.state.cached = {**cached, step_id: cached.get(step_id, 0) + 1}

    def on_completed(self, e: Event) -> None:
        self.catch_up(e)
        cur = self.state.step(e.step_id)
        if cur.status in STEP_TERMINAL:
            return  # a duplicate delivery: applied once
        output = e.payload
        self.bind(e.worker_id)
        hit = bool(e.cache) and e.cache.get("hit") is True  # served from the cache (ours)
        versions = self.state.versions
        if e.handler_version and (versions or {}).get(e.step_id) != e.handler_version:
            self.state.versions = {
                **(versions or {}),
                e.step_id: e.handler_version,
            }  # clones share the old
        idx = e.map_index
        if idx is not None:
            if hit and cur.map is not None and idx in cur.map.active:
                self.count_cached(e.step_id)
            self.instance_completed(e.step_id, idx, output)
            return
        if e.iteration is not None and e.iteration != cur.iteration:
            return  # an earlier loop iteration's late report (its attempt is 1 again)
        if hit:
            self.count_cached(e.step_id)
        if self.plan.steps[e.step_id].type == "planner" and not self.materialize(e, output):
            return
        self.complete_step(e.step_id, output, worker_id=e.worker_id)
        self.schedule()

    def materialize(self, e: Event, output: object) -> bool:
        """A planner's output joins the run as steps (see ``dag.planner``); False when it
        cannot, and the planner step failed."""
        s = self.state
        planned = sum(1 for step in self.defn.steps if "." in step.id)
        try:
            steps = fragment(self.defn, self.plan.steps[e.step_id], output, planned)
        except PlanError as exc:
            self.fail_step(e.step_id, str(exc), 0, announce=False)
            return False
        if steps:
            s.extended = extended(self.defn, steps)
            self.defn = s.extended
            self.plan = plan(s.extended)
        self.publish(self.event(PLANNER_MATERIALIZED, e.step_id, {"steps": len(steps)}))
        return True

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
        payload = failure_of(e.payload)
        error = str(payload.get("error") or "failed")
        kind = payload.get("failure_type", RETRIABLE)
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
        stale = e.attempt_number not in (0, cur.attempt) or e.iteration not in (None, cur.iteration)
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
        if e.iteration is not None and e.iteration != cur.iteration:
            return
        loop = self.plan.loops.get(e.step_id)
        output = e.payload
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

    def on_gate_end(self, e: Event) -> None:
        """A sleep woke, a wait matched or timed out, an approval was decided or expired:
        applied once, to a step still waiting (a late or repeated one is a no-op)."""
        cur = self.state.step(e.step_id)
        if cur.status != RUNNING or self.plan.steps[e.step_id].type != GATE_ENDS[e.type]:
            return
        t = e.type
        if t in (APPROVAL_REJECTED, APPROVAL_EXPIRED):
            self.fail_step(e.step_id, approval_failure(e), 0, announce=False)
            return
        payload = e.payload if isinstance(e.payload, dict) else {}
        if t in (WORKFLOW_CHILD_COMPLETED, WORKFLOW_CHILD_FAILED):
            if payload.get("child_run_id") not in (None, cur.detail):
                return  # not this step's child
            if t == WORKFLOW_CHILD_FAILED:
                why = f"child workflow failed: {payload.get('error') or 'failed'}"
                self.fail_step(e.step_id, why, 0, announce=False)
                return
            self.complete_step(e.step_id, payload.get("output"))
            self.schedule()
            return
        output = WAIT_TIMED_OUT if t == STEP_WAIT_TIMEOUT else e.payload
        self.complete_step(e.step_id, output)
        self.schedule()

    def on_approval_requested(self, e: Event) -> None:
        """The token was issued: kept with the gate, so a restart does not issue another."""
        cur = self.state.step(e.step_id)
        payload = e.payload if isinstance(e.payload, dict) else {}
        if cur.status == RUNNING and isinstance(cur.detail, ApprovalGate) and payload.get("token"):
            st = self.st(e.step_id)
            st.detail = cur.detail.issued(str(payload["token"]))

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
            self.publish(self.event(WORKFLOW_FAILED, payload=payload, attempt=s.reopened))
            return
        cur = s.step(t.step_id)
        if t.kind in GATE_TIMERS:
            step_type, event_type = GATE_TIMERS[t.kind]
            if cur.status == RUNNING and self.plan.steps[t.step_id].type == step_type:
                self.publish(self.event(event_type, t.step_id))
            return
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


def approval_failure(e: Event) -> str:
    """Why a rejected or expired approval failed its step (Go: "approval timed out", or
    the rejection's body, "approval rejected" without one)."""
    if e.type == APPROVAL_EXPIRED:
        return "approval timed out"
    p = e.payload
    if isinstance(p, dict):
        who = f" by {p['by']}" if p.get("by") else ""
        comment = f": {p['comment']}" if p.get("comment") else ""
        return f"approval rejected{who}{comment}"
    if isinstance(p, str) and p:
        return p
    return "approval rejected"


def failure_of(payload: object) -> dict:
    """A step.failed payload as Go reads it: ``{error, failure_type, retry_after_ms}``, or
    a bare JSON string (an error text, retriable)."""
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, str):
        return {"error": payload, "failure_type": RETRIABLE}
    return {}
