"""Sagas: a step that fails for good with no on_failure has the completed steps undone by
their ``compensate`` steps, one at a time, the last completed first. A mixin of
`transaction.Transaction` (which applies a compensate step's end)."""

from __future__ import annotations

from .events import COMPENSATE_STARTED
from .state import COMPLETED, PENDING, Failure


class Saga:
    """Start and go on with a run's compensation (see the module docstring)."""

    def _compensating(self, step_id: str) -> bool:
        return any(s.compensate == step_id for s in self.plan.steps.values())

    def start_compensation(self, step_id: str, error: str, message: str) -> bool:
        """A step failed for good with no on_failure: the compensate steps of the steps
        that completed run one at a time, the last completed undone first (a saga). False
        when there is nothing to undo."""
        s = self.state
        done = [
            sid
            for sid in self.plan.order
            if self.plan.steps[sid].compensate
            and sid not in self.plan.handlers
            and s.step(sid).status == COMPLETED
        ]
        done.sort(key=lambda sid: s.step(sid).ended_at or 0.0, reverse=True)
        undo = tuple((self.plan.steps[sid].compensate, sid) for sid in done)
        undo = tuple(u for u in undo if s.step(u[0]).status == PENDING)
        if not undo:
            return False
        s.failure = Failure(step_id, message, undo, error, saga=True)
        steps = [target for target, _ in undo]
        self.publish(
            self.event(COMPENSATE_STARTED, payload={"trigger_step": step_id, "steps": steps})
        )
        self.next_compensation()
        return True

    def next_compensation(self) -> None:
        """Dispatch the next compensate step (Go's input: what it undoes and why)."""
        s = self.state
        failure = s.failure
        target, original = failure.undo[0]
        s.failure = Failure(
            failure.step_id, failure.error, failure.undo[1:], failure.cause, saga=True
        )
        h = self.st(target)
        h.input = {
            "original_step": original,
            "original_output": s.step(original).output,
            "trigger_step": failure.step_id,
            "trigger_error": failure.cause,
        }
        h.first_at = self.now
        self.dispatch(target, attempt=1, iteration=0)
