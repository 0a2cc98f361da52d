"""Worker affinity (a workflow's ``sticky: soft | hard``): where a sticky run's tasks go.

The binding is a fact of the run's history: the worker that completed its first step
(``RunState.bound_worker``, decided by the pure core). This shell part routes each later task
of the run to ``sticky.{task}.{worker_id}.{run_id}`` on STICKY_TASKS, which only that worker
consumes, and mirrors the binding into KV ``sticky_bindings`` (key: run id, value: the worker
id, as Go writes it; TTL 25 h) for operators and other tools.

- ``hard``: tasks always go to the bound worker and wait for it (the workflow's timeout bounds
  the wait; a worker restarted with the same ``--worker-id`` finds its queue again).
- ``soft``: tasks go to the bound worker while it is alive (its entry in the ``workers`` KV:
  deleted when it stops, expired 60 s after its last heartbeat when it dies); otherwise to the
  shared queue. A task sent to a worker that then disappears (queued there, or running when
  it stopped or died) is re-sent to the shared queue by a check every ``FALLBACK_CHECK``
  seconds until the step's attempt ends.
"""

from __future__ import annotations

import contextlib
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.state import STEP_ACTIVE, RunState
from dagnats_nb.wire import protocol

FALLBACK_CHECK = 2.0  # seconds between liveness checks of a soft run's waiting task
ALIVE_CACHE = 1.0  # seconds a liveness answer is reused


class StickyRouter:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._workers = None
        self._bindings = None
        self._alive: dict[str, tuple[bool, float]] = {}

    async def start(self) -> None:
        self._workers = await self.js.key_value("workers")
        self._bindings = await self.js.key_value("sticky_bindings")

    async def alive(self, worker_id: str) -> bool:
        """Whether the worker has a live entry in the ``workers`` KV (cached for a second)."""
        hit = self._alive.get(worker_id)
        now = time.monotonic()
        if hit is not None and now - hit[1] < ALIVE_CACHE:
            return hit[0]
        try:
            entry = await self._workers.get(worker_id)
            found = entry.value is not None and len(entry.value) > 0
        except (KeyNotFoundError, NotFoundError):
            found = False
        self._alive[worker_id] = (found, now)
        return found

    async def subject(
        self, defn: WorkflowDef, state: RunState | None, task: protocol.TaskPayload
    ) -> str:
        """Where the task goes: the bound worker's sticky queue, or the shared task queue."""
        bound = state.bound_worker if state is not None else ""
        if defn.sticky and bound and (defn.sticky == "hard" or await self.alive(bound)):
            return protocol.sticky_subject(task.task, bound, task.run_id)
        return protocol.task_subject(task.task, task.run_id, task.group)

    async def bind(self, state: RunState) -> None:
        """Record the run's binding in KV ``sticky_bindings`` as Go does: the worker id as
        the value, created once (a binding is never moved)."""
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._bindings.create(state.run_id, state.bound_worker.encode())


def still_waiting(state: RunState | None, task: protocol.TaskPayload) -> bool:
    """Whether ``task`` is still the step's (or map item's) current attempt, not finished:
    queued, or running on a worker that may yet disappear."""
    if state is None or state.terminal:
        return False
    st = state.step(task.step_id)
    if task.map_index is not None:
        inst = st.map.active.get(task.map_index) if st.map is not None else None
        return inst is not None and inst.status in STEP_ACTIVE and inst.attempt == task.attempt
    current = st.attempt == task.attempt and st.iteration == (task.iteration or 0)
    return st.status in STEP_ACTIVE and current
