"""Finished runs leave memory (issue 15): the orchestrator's memory follows its active runs.

A run is evicted once it has ended, no decision of it is still on its way (its outbox is
empty) and its final ``workflow_runs`` record is stored: from then on its record answers
reads (``wire.runs.record_state``; ``facade.reads``), its history everything else. The
last ``RECENT`` evicted runs stay at hand for waits and watches that come just after the
end; a wait for an older one reads its record. A record that could not be written (a
full store) is tried again (``runtime.records``) and the run stays in memory, and in the
snapshots' checkpoint, until it is. During a whole replay a run that ends is evicted at
once (its record was written when it ended the first time), and the ids of the runs
evicted so far are kept until the replay ends, so a ``workflow.started`` seen again is
known without asking the server. After a snapshot restart the runs that ended in the
history it read are kept, and their records written again, when it ends. A sample of
each workflow's finished runs (events, steps) stays for ``sizing()``.

Eviction is on with ``snapshot_restart`` (the restart that loads only active runs).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.state import RunState
from dagnats_nb.runtime.records import RunRecords

RECENT = 256  # evicted runs kept at hand for waits and watches
SAMPLE = 64  # finished runs per workflow whose (events, steps) sizing reads


class Eviction:
    """The orchestrator's eviction of finished runs (a mixin)."""

    runs: dict[str, RunState]
    run_defs: dict[str, WorkflowDef]
    records: RunRecords
    counters: Counter[str]
    replaying: bool
    restored_from: int
    evicts: bool
    snapshots: Any
    _track: Callable[[Coroutine[Any, Any, Any]], None]

    def _init_eviction(self) -> None:
        self.recent: OrderedDict[str, RunState] = OrderedDict()
        self.finished_sample: dict[str, deque[tuple[int, int]]] = {}
        # ended runs whose final record is stored -> the events that record counts
        self._recorded: dict[str, int] = {}
        self._gone: set[str] = set()  # runs evicted during this replay
        # runs whose start this process is publishing (new ids): not yet applied, and
        # not to be looked up as maybe started before
        self.expected: set[str] = set()

    def _evict_if_done(self, run_id: str) -> None:
        """Evict the run when it has ended, nothing of it is on its way and (but during a
        replay) its final record is stored. A record written before an event that came
        after the end (a late result, say) is written again first: it must say what memory
        said."""
        state = self.runs.get(run_id)
        if not self.evicts or state is None or not state.terminal or state.outbox:
            return
        if self.replaying and self.restored_from:  # a short replay: see _end_replay
            return
        if not self.replaying:
            counted = self._recorded.get(run_id)
            if counted is None:
                return
            if counted != state.event_count:
                del self._recorded[run_id]
                self._track(self._record_again(state))
                return
        defn = self.run_defs.pop(run_id, None)
        del self.runs[run_id]
        self._recorded.pop(run_id, None)
        self.recent[run_id] = state
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        if self.replaying:
            self._gone.add(run_id)
        self.snapshots.dirty(run_id)  # its snapshot, if any, is purged at the next cut
        sample = self.finished_sample.setdefault(state.workflow, deque(maxlen=SAMPLE))
        sample.append((state.event_count, len(defn.steps) if defn is not None else 0))
        self.counters["runs_evicted"] += 1

    def _recorded_end(self, state: RunState) -> None:
        """The run's final record (of ``state``) is stored: it may leave memory."""
        if self.evicts and state.run_id in self.runs:
            self._recorded[state.run_id] = state.event_count + len(state.outbox)
            self._evict_if_done(state.run_id)

    async def _record_again(self, state: RunState) -> None:
        if await self.records.now(state):
            self._recorded_end(state)

    def expect(self, run_id: str) -> None:
        """A start of a new run is on its way (see ``expected``)."""
        self.expected.add(run_id)

    def known_ended(self, run_id: str) -> RunState | None:
        """A run that left memory, when it is among the recent ones."""
        return self.recent.get(run_id)

    def _end_eviction_replay(self) -> None:
        self._gone.clear()
