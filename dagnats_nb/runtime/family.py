"""The shell of ``sub_workflow`` steps: child runs started, cancelled and heard from.

The core decides (``dag.transaction.start_child``): the parent's history gets
``workflow.spawn`` and the shell starts the child with its own ``workflow.started``,
linked both ways (the child's payload names ``parent_run_id``, ``parent_step_id``,
``root_run_id`` and its ``depth``; the parent's step holds the child's run id). When the
child ends, the parent's history gets ``workflow.child.completed`` (our ``output`` added:
the child's output, Go reads it from its run record) or ``workflow.child.failed``
(``{child_run_id, error, parent_step_id}``, as Go writes them). A parent that ends while
its child runs cancels the child. After a restart the core asks again for every child
still awaited: one that never started is started, one that ended meanwhile is reported
again (the parent applies it once)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from dagnats_nb.dag.events import (
    WORKFLOW_CANCELLED,
    WORKFLOW_CHILD_COMPLETED,
    WORKFLOW_CHILD_FAILED,
    WORKFLOW_STARTED,
    Event,
)
from dagnats_nb.dag.state import RUN_COMPLETED, CancelChild, RunState, SpawnChild
from dagnats_nb.dag.validate import check
from dagnats_nb.transport.stores import DefinitionStore

log = logging.getLogger("dagnats_nb.runtime.family")


class Family:
    def __init__(
        self,
        js,
        defs: DefinitionStore,
        runs: dict[str, RunState],
        publish: Callable[[Event], Awaitable[None]],
        ended: Callable[[str], Awaitable[RunState | None]] | None = None,
    ) -> None:
        self.js = js
        self.defs = defs
        self.runs = runs
        self.publish = publish
        self.ended = ended  # a run not in memory that ended (None: it never started)

    async def spawn(self, parent: RunState, a: SpawnChild) -> None:
        child = self.runs.get(a.child_run_id)
        if child is None and self.ended is not None:
            child = await self.ended(a.child_run_id)
        if child is not None:
            if child.terminal and not a.detach:
                await self.tell_parent(child)
            return
        try:
            h, defn = await self.defs.get(a.workflow)
            check(defn)
        except Exception as exc:  # not registered, or step types we cannot run
            if not a.detach:
                error = f"cannot start workflow '{a.workflow}': {exc}"
                await self.publish(_child_event(parent.run_id, a.step_id, a.child_run_id, error))
            else:
                log.error("detached child %s of %s not started: %s", a.child_run_id, parent, exc)
            return
        payload = {"workflow_def": self.defs.wire(h, defn), "input": a.input, "def_hash": h}
        if not a.detach:
            payload |= {
                "parent_run_id": parent.run_id,
                "parent_step_id": a.step_id,
                "root_run_id": parent.root_run_id or parent.run_id,
                "depth": parent.depth + 1,
            }
        await self.publish(Event(WORKFLOW_STARTED, a.child_run_id, payload=payload))

    async def tell_parent(self, child: RunState) -> None:
        error = None if child.status == RUN_COMPLETED else (child.error or child.status)
        event = _child_event(child.parent_run_id, child.parent_step_id, child.run_id, error)
        if error is None:
            event.payload["output"] = child.output
        await self.publish(event)

    async def cancel(self, a: CancelChild) -> None:
        child = self.runs.get(a.child_run_id)
        if child is None or child.terminal:
            return
        payload = {"reason": f"cancelled: {a.reason}"}
        await self.publish(Event(WORKFLOW_CANCELLED, a.child_run_id, payload=payload))


def _child_event(parent: str, step: str, child: str, error: str | None) -> Event:
    payload = {"child_run_id": child, "error": error or "", "parent_step_id": step}
    kind = WORKFLOW_CHILD_COMPLETED if error is None else WORKFLOW_CHILD_FAILED
    return Event(kind, parent, step_id=step, payload=payload)
