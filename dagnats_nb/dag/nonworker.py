"""Steps that run without a worker, as decisions of a run's transaction: the waiting
steps (sleep, wait_for_event, approval, see `gates`), sub_workflow (a child run) and
respond (the answer to the run's HTTP request). A mixin of `transaction.Transaction`."""

from __future__ import annotations

from typing import Any

from .events import STEP_SLEEP_STARTED, STEP_WAIT_STARTED, WORKFLOW_SPAWN, format_time
from .gates import (
    SUB_WORKFLOW_MAX_DEPTH,
    GateError,
    approval_gate,
    child_run_id,
    child_workflow,
    event_wait,
    response,
    sleep_seconds,
)
from .model import StepDef
from .state import RUNNING, AwaitEvent, RequestApproval, Respond, SetTimer, SpawnChild


class WithoutWorker:
    """Start a step that no worker runs (see the module docstring)."""

    def start_gate(self, step: StepDef, value: Any) -> None:
        """A step that waits without a worker (sleep, wait_for_event, approval): running
        from now until its timer, its event or its decision ends it. A config that cannot
        be resolved fails it (a retry would resolve it the same way)."""
        st = self.st(step.id)
        st.input, st.attempt = value, 1
        st.first_at = st.started_at = st.queued_at = self.now
        try:
            if step.type == "sleep":
                wake = self.now + sleep_seconds(step, self.state.input, self.now)
                st.status, st.due_at = RUNNING, wake
                self.publish(
                    self.event(STEP_SLEEP_STARTED, step.id, {"wake_at": format_time(wake)})
                )
                self.actions.append(SetTimer(wake, "sleep", step.id))
            elif step.type == "wait_for_event":
                outputs = {k: v.output for k, v in self.state.steps.items() if v.output is not None}
                wait = event_wait(step, self.state.input, outputs)
                st.status, st.due_at, st.detail = RUNNING, self.now + wait.timeout_s, wait
                payload = {**wait.to_dict(), "timeout_at": format_time(st.due_at)}
                self.publish(self.event(STEP_WAIT_STARTED, step.id, payload))
                self.actions.append(AwaitEvent(step.id, wait))
                self.actions.append(SetTimer(st.due_at, "wait_timeout", step.id))
            else:
                gate = approval_gate(step)
                st.status, st.due_at, st.detail = RUNNING, self.now + gate.timeout_s, gate
                self.actions.append(RequestApproval(step.id, gate, st.due_at))
                self.actions.append(SetTimer(st.due_at, "approval_timeout", step.id))
        except GateError as exc:
            self.fail_step(step.id, str(exc), 0, announce=False)

    def start_child(self, step: StepDef, value: Any) -> None:
        """A sub_workflow step: its child run starts with the step's input and the step
        waits for it to end (Go's ``workflow.spawn``); a detached child is left to run on its
        own and the step completes at once with ``{"child_run_id"}``."""
        st = self.st(step.id)
        st.input, st.attempt = value, 1
        st.first_at = st.started_at = st.queued_at = self.now
        workflow, detach = child_workflow(step)
        if self.state.depth + 1 > SUB_WORKFLOW_MAX_DEPTH:
            why = f"sub_workflow nesting deeper than {SUB_WORKFLOW_MAX_DEPTH} runs"
            self.fail_step(step.id, why, 0, announce=False)
            return
        child = child_run_id(self.state.run_id, step.id)
        payload = {
            "child_run_id": child,
            "child_workflow": workflow,
            "detach": detach,
            "input": value,
            "parent_step_id": step.id,
        }
        self.publish(self.event(WORKFLOW_SPAWN, step.id, payload))
        self.actions.append(SpawnChild(step.id, child, workflow, value, detach))
        if detach:
            self.complete_step(step.id, {"child_run_id": child})
        else:
            st.status, st.detail = RUNNING, child

    def respond(self, step: StepDef, value: Any) -> None:
        """A respond step answers the run's HTTP request and completes with the body."""
        st = self.st(step.id)
        st.input, st.attempt = value, 1
        st.first_at = st.started_at = st.queued_at = self.now
        try:
            reply = response(step, value, self.state.input, len(step.depends_on) == 1)
        except GateError as exc:
            self.fail_step(step.id, str(exc), 0, announce=False)
            return
        self.actions.append(Respond(step.id, reply))
        self.complete_step(step.id, reply.body, publish=True)
