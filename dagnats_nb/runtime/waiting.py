"""Who waits for a run, and who watches it: the orchestrator's futures and callbacks,
woken as its runs change and end (a mixin of ``runtime.orchestrator.Orchestrator``)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from dagnats_nb.dag.state import RunState
from dagnats_nb.errors import RunError
from dagnats_nb.runtime.records import RunRecords

log = logging.getLogger("dagnats_nb.runtime.orchestrator")


class Waits:
    """Waiting for runs to end and watching them change."""

    runs: dict[str, RunState]
    recent: dict[str, RunState]
    records: RunRecords
    evicts: bool
    expected: set[str]
    errors: deque[str]
    store_full: str | None
    _waiters: dict[str, list[asyncio.Future]]
    _watchers: dict[str, list[Callable[[RunState], None]]]

    def report_fault(
        self, message: str, *, store_full: bool = False, end_waits: bool = False
    ) -> None:
        """Record an engine fault; a full store (or a dead server: ``end_waits``) also ends
        every wait, and fails later ones, with that message."""
        log.error("%s", message)
        self.errors.append(message)
        if store_full or end_waits:
            self.store_full = message
            for run_id in list(self._waiters):
                for fut in self._waiters.pop(run_id):
                    if not fut.done():
                        fut.set_exception(RunError(message))

    # -- watching ------------------------------------------------------------------------

    def watch(self, run_id: str, callback) -> Callable[[], None]:
        """Call ``callback(state)`` on the engine loop after each change of the run's state
        (and once at once with the current state). Returns a function that stops it."""
        self._watchers.setdefault(run_id, []).append(callback)
        state = self.runs.get(run_id) or self.recent.get(run_id)
        if state is not None:
            self._safe_call(callback, state)

        def unwatch() -> None:
            callbacks = self._watchers.get(run_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._watchers.pop(run_id, None)

        return unwatch

    def _notify(self, run_id: str, state: RunState) -> None:
        for callback in self._watchers.get(run_id, ()):
            self._safe_call(callback, state)

    def _safe_call(self, callback, state: RunState) -> None:
        try:
            callback(state)
        except Exception as exc:  # a broken view must not break the engine
            log.warning("run watcher %r failed: %s", callback, exc)

    # -- waiting -------------------------------------------------------------------------

    def _wake(self, run_id: str) -> None:
        state = self.runs.get(run_id) or self.recent.get(run_id)
        for fut in self._waiters.pop(run_id, ()):
            if not fut.done():
                fut.set_result(state)

    async def wait(self, run_id: str) -> RunState:
        """The run's state once it has ended (one that left memory: from its record)."""
        state = self.runs.get(run_id) or self.recent.get(run_id)
        if state is not None and state.terminal:
            return state
        if self.store_full:
            raise RunError(self.store_full)
        fut = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(run_id, [])
        waiters.append(fut)
        try:
            if state is None and self.evicts and run_id not in self.expected:
                # a run not in memory that may have ended and left: after registering, so
                # that an end after this wakes it
                ended = await self.records.ended(run_id)
                if ended is not None and not fut.done():
                    return ended
            return await fut
        finally:  # a wait that timed out (or was cancelled) leaves nothing behind
            if fut in waiters:
                waiters.remove(fut)
            if not waiters and self._waiters.get(run_id) is waiters:
                del self._waiters[run_id]
