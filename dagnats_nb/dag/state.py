"""Run state rebuilt from a run's events, and the actions the core asks the shell to perform.

Plain data, no I/O. Step states are created lazily: a step absent from ``RunState.steps``
is pending, which keeps a waiting run small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import Event, TaskPayload

RUN_PENDING = "pending"  # waits for a slot of its workflow's concurrency.max_runs
RUN_RUNNING = "running"
RUN_COMPLETED = "completed"
RUN_FAILED = "failed"
RUN_CANCELLED = "cancelled"
RUN_TERMINAL = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})

PENDING = "pending"
QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"  # a failed attempt waits for its retry delay
WAITING = "waiting"  # an agent loop waits for its loop delay
COMPLETED = "completed"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"
STEP_DONE = frozenset({COMPLETED, SKIPPED})
STEP_TERMINAL = frozenset({COMPLETED, FAILED, SKIPPED, CANCELLED})
STEP_ACTIVE = frozenset({QUEUED, RUNNING})


@dataclass(slots=True)
class Instance:
    """One map instance that has been dispatched and has not completed."""

    status: str = QUEUED
    attempt: int = 1
    due_at: float | None = None

    def clone(self) -> Instance:
        """A shallow copy (much faster than ``copy.copy`` on a slotted dataclass)."""
        return Instance(self.status, self.attempt, self.due_at)


@dataclass(slots=True)
class MapState:
    count: int
    outputs: list[Any]
    next_index: int = 0  # instances below it were dispatched
    done: int = 0
    active: dict[int, Instance] = field(default_factory=dict)

    def clone(self) -> MapState:
        """A shallow copy (much faster than ``copy.copy`` on a slotted dataclass)."""
        return MapState(self.count, self.outputs, self.next_index, self.done, self.active)


@dataclass(slots=True)
class StepState:
    status: str = PENDING
    attempt: int = 0
    iteration: int = 0
    input: Any = None  # the input of the current attempt (loops: of the current iteration)
    output: Any = None
    error: str | None = None
    first_at: float | None = None  # first dispatch, for an agent loop's max_duration
    queued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    due_at: float | None = None
    worker_id: str = ""
    map: MapState | None = None
    detail: Any = None  # a waiting step's resolved gate (gates.EventWait, gates.ApprovalGate)

    def clone(self) -> StepState:
        """A shallow copy (much faster than ``copy.copy`` on a slotted dataclass)."""
        return StepState(
            self.status,
            self.attempt,
            self.iteration,
            self.input,
            self.output,
            self.error,
            self.first_at,
            self.queued_at,
            self.started_at,
            self.ended_at,
            self.due_at,
            self.worker_id,
            self.map,
            self.detail,
        )


@dataclass(slots=True)
class Failure:
    step_id: str
    error: str
    # compensation: the compensate steps still to run, in order, with the step each undoes
    undo: tuple[tuple[str, str], ...] = ()
    cause: str = ""  # the failed step's own error (the compensate steps' trigger_error)
    saga: bool = False  # compensating: nothing new starts, later failures wait their turn


@dataclass(slots=True)
class RunState:
    run_id: str
    workflow: str
    version: str
    def_hash: str
    input: Any
    started_at: float
    status: str = RUN_RUNNING
    ended_at: float | None = None
    output: Any = None
    error: str | None = None
    failure: Failure | None = None  # a step failed and its on_failure handler runs
    steps: dict[str, StepState] = field(default_factory=dict)
    # Events the core decided to publish and has not yet seen come back, by message id,
    # with the task to dispatch alongside a step.queued event. Replayed by ``resume``.
    outbox: dict[str, tuple[Event, TaskPayload | None]] = field(default_factory=dict)
    last_seq: int = 0
    event_count: int = 0
    reopened: int = 0  # times a dead-letter replay resumed the failed run
    resumed_at: float | None = None  # the last reopening: the run's timeout counts from it
    bound_worker: str = ""  # sticky workflows: the worker that completed the first step
    legacy: bool = False  # started by dagnats-nb < 0.2: step events wrap their output
    parent_run_id: str = ""  # a sub_workflow's child run: the run and step that wait for it
    parent_step_id: str = ""
    root_run_id: str = ""  # the first run of its family ("" = itself)
    depth: int = 0  # how deep in sub_workflows: a root run is 0
    extended: Any = None  # the definition with the steps planners added (a WorkflowDef)
    forked_from: str = ""  # a fork (``dag.fork``): the run it was forked from, at which step
    fork_step: str = ""
    reused: frozenset[str] = frozenset()  # the steps it completed with the source's outputs
    # step -> its results (a map step's items) served from the step cache (None: none yet)
    cached: dict[str, int] | None = None
    # step -> the handler version its last completed result recorded (our workers'; None
    # until one did): what ``dag.fork.rerun_seeds`` compares with today's handlers
    versions: dict[str, str] | None = None

    def clone(self) -> RunState:
        """A shallow copy (much faster than ``copy.copy`` on a slotted dataclass)."""
        return RunState(
            self.run_id,
            self.workflow,
            self.version,
            self.def_hash,
            self.input,
            self.started_at,
            self.status,
            self.ended_at,
            self.output,
            self.error,
            self.failure,
            self.steps,
            self.outbox,
            self.last_seq,
            self.event_count,
            self.reopened,
            self.resumed_at,
            self.bound_worker,
            self.legacy,
            self.parent_run_id,
            self.parent_step_id,
            self.root_run_id,
            self.depth,
            self.extended,
            self.forked_from,
            self.fork_step,
            self.reused,
            self.cached,
            self.versions,
        )

    def step(self, step_id: str) -> StepState:
        st = self.steps.get(step_id)
        return st if st is not None else _PENDING

    @property
    def terminal(self) -> bool:
        return self.status in RUN_TERMINAL


_PENDING = StepState()


def result_applied(state: RunState | None, task: Any) -> bool:
    """Whether the run has moved past ``task``'s attempt of a step (or map item): its result
    was applied, or a later attempt or iteration exists, or the run ended. The task, come
    again (a server that forgot an ack), need not run. An attempt the run has not recorded
    yet (a retry whose ``step.queued`` is still on its way) is not past."""
    step_id, attempt, map_index = task.step_id, task.attempt, task.map_index
    iteration = task.iteration or 0
    if state is None:
        return False
    if state.terminal:
        return True
    st = state.step(step_id)
    if st.status == PENDING:  # no task of it was sent (or no such step): nothing to run
        return True
    if map_index is not None:
        if st.map is None:
            return st.status in (COMPLETED, FAILED, SKIPPED)
        inst = st.map.active.get(map_index)
        if inst is None:  # dispatched and no longer active: finished
            return map_index < st.map.next_index
        return inst.attempt > attempt or (
            inst.attempt == attempt and inst.status not in STEP_ACTIVE
        )
    if (st.iteration, st.attempt) != (iteration, attempt):
        return (st.iteration, st.attempt) > (iteration, attempt)
    return st.status not in STEP_ACTIVE


# Actions: what the shell must do after ``advance``.


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Publish ``task`` on TASK_QUEUES and, right behind it, its ``queued`` event (a task
    the server refuses is sent again while its step waits; a crash before both are sent
    leaves the event in the run's outbox, and the restart sends both again)."""

    task: TaskPayload
    queued: Event


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``event`` on WORKFLOW_HISTORY."""

    event: Event


@dataclass(frozen=True, slots=True)
class DeadLetter:
    task: TaskPayload
    error: str
    attempts: int


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call ``advance`` with a :class:`Timer` event at ``at`` (POSIX seconds)."""

    at: float
    kind: str  # retry | loop | run_timeout | sleep | wait_timeout | approval_timeout
    step_id: str = ""
    map_index: int | None = None
    seqno: int = 0  # the attempt (retry) or iteration (loop) the timer is for


@dataclass(frozen=True, slots=True)
class TimerKey:
    """Which timer a run's :class:`SetTimer` is (its time aside): the shell keeps one timer
    per key, so a timer asked for again (``resume`` after a replay) is set once."""

    run_id: str
    kind: str
    step_id: str
    map_index: int | None
    seqno: int

    @classmethod
    def of(cls, run_id: str, timer: SetTimer) -> TimerKey:
        return cls(run_id, timer.kind, timer.step_id, timer.map_index, timer.seqno)


@dataclass(frozen=True, slots=True)
class AwaitEvent:
    """Complete the waiting step with the first event (or signal) that matches ``wait``:
    the shell publishes its ``step.wait.matched``."""

    step_id: str
    wait: Any  # gates.EventWait


@dataclass(frozen=True, slots=True)
class RequestApproval:
    """Issue the approval step's token (once: again after a crash reuses it) and publish
    its ``approval.requested`` event and notification."""

    step_id: str
    gate: Any  # gates.ApprovalGate
    expires_at: float


@dataclass(frozen=True, slots=True)
class SpawnChild:
    """Start the sub_workflow step's child run (once: a child that exists is left alone, or,
    when it already ended, reported to its parent again)."""

    step_id: str
    child_run_id: str
    workflow: str
    input: Any
    detach: bool = False


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the HTTP request that started the run (core NATS
    ``dagnats.http.response.{run}``, as Go's respond step)."""

    step_id: str
    response: Any  # gates.Response


@dataclass(frozen=True, slots=True)
class CancelChild:
    """Cancel a child run whose parent ended while it ran."""

    child_run_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AwaitAdmission:
    """The run waits for one of its workflow's ``max_runs`` slots (``workflow.admitted``)."""

    workflow: str
    limit: int


@dataclass(frozen=True, slots=True)
class RunEnded:
    status: str


Action = (
    Dispatch
    | Publish
    | DeadLetter
    | SetTimer
    | AwaitEvent
    | RequestApproval
    | SpawnChild
    | CancelChild
    | Respond
    | AwaitAdmission
    | RunEnded
)


@dataclass(frozen=True, slots=True)
class Timer:
    """A timer firing: the one input of ``advance`` that is not a stored event."""

    at: float
    kind: str
    run_id: str
    step_id: str = ""
    map_index: int | None = None
    seqno: int = 0
