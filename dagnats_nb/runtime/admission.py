"""``concurrency.max_runs``: runs of a workflow beyond its limit wait, in the order they
started, and start as runs of it end.

The core starts such a run ``pending`` and asks for a slot
(:class:`~dagnats_nb.dag.state.AwaitAdmission`); this shell part counts the workflow's
running runs and admits waiting ones with ``workflow.admitted`` (ours: Go writes no event,
it flips the run record) as slots free up. A slot is taken when the admission is decided,
so two runs never take one slot; after a restart the counts are rebuilt from the replayed
runs and the oldest waiting runs are admitted first. Child runs of sub_workflow steps are
not admitted and not counted, as in Go."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from dagnats_nb.dag.events import WORKFLOW_ADMITTED, Event
from dagnats_nb.dag.state import RUN_PENDING, RUN_RUNNING, RunState


class Admission:
    def __init__(self, publish: Callable[[Event], Awaitable[None]], track) -> None:
        self.publish = publish
        self.track = track  # runs a coroutine in the background, reporting its failure
        self.limits: dict[str, int] = {}
        self.active: dict[str, set[str]] = {}
        self.waiting: dict[str, deque[str]] = {}

    def rebuild(self, runs: Iterable[tuple[RunState, int]]) -> None:
        """After replay: ``(state, max_runs)`` of every run, oldest first."""
        for state, limit in runs:
            if not limit or state.parent_run_id:
                continue
            self.limits[state.workflow] = limit
            if state.status == RUN_RUNNING:
                self.active.setdefault(state.workflow, set()).add(state.run_id)
            elif state.status == RUN_PENDING:
                self.waiting.setdefault(state.workflow, deque()).append(state.run_id)
        for workflow in list(self.waiting):
            self._admit(workflow)

    def wait(self, run_id: str, workflow: str, limit: int) -> None:
        self.limits[workflow] = limit
        self.waiting.setdefault(workflow, deque()).append(run_id)
        self._admit(workflow)

    def ended(self, state: RunState) -> None:
        workflow = state.workflow
        if workflow not in self.limits:
            return
        self.active.get(workflow, set()).discard(state.run_id)
        waiting = self.waiting.get(workflow)
        if waiting and state.run_id in waiting:
            waiting.remove(state.run_id)  # cancelled while it waited
        self._admit(workflow)

    def _admit(self, workflow: str) -> None:
        active = self.active.setdefault(workflow, set())
        waiting = self.waiting.get(workflow) or deque()
        while waiting and len(active) < self.limits.get(workflow, 0):
            run_id = waiting.popleft()
            active.add(run_id)
            self.track(self.publish(Event(WORKFLOW_ADMITTED, run_id)))

    def counts(self, workflow: str) -> tuple[int, int]:
        """``(running, waiting)`` runs of a workflow with a max_runs limit."""
        return len(self.active.get(workflow, ())), len(self.waiting.get(workflow, ()))
