"""A restart from snapshots (issue 15): load the runs of the last checkpoint, rebuild the
ones whose snapshot is missing or behind from their history, and tell a ``workflow.started``
sent again for a run that ended before the checkpoint (a mixin of
``runtime.orchestrator.Orchestrator``; ``runtime.snapshots`` writes what it reads)."""

from __future__ import annotations

import logging
from collections import Counter

import nats.js.errors
from nats.js import JetStreamContext

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.advance import advance, start
from dagnats_nb.dag.state import RunState
from dagnats_nb.runtime.snapshots import Snapshots
from dagnats_nb.transport.reading import read_subject
from dagnats_nb.transport.stores import DefinitionStore
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.orchestrator")


class SnapshotRestart:
    """The orchestrator's start from its snapshots."""

    js: JetStreamContext
    runs: dict[str, RunState]
    run_defs: dict[str, WorkflowDef]
    snapshots: Snapshots
    defs: DefinitionStore
    counters: Counter[str]
    last_seq: int
    restored_from: int
    replaying: bool
    evicts: bool
    recent: dict[str, RunState]
    _gone: set[str]

    async def _restore(self, history_last: int) -> int:
        """Load the runs of the last checkpoint (their snapshots; a run whose snapshot is
        missing or behind, from its history); the sequence to read the history from, 0
        for all of it (no usable checkpoint)."""
        loaded = await self.snapshots.load()
        if loaded is None or loaded.seq > history_last:
            return 0
        for run_id, state in loaded.states.items():
            self.runs[run_id] = state
            self.run_defs[run_id] = state.extended or await self.snapshots.definition(state)
        self.last_seq = self.restored_from = loaded.seq
        for run_id, (state, after) in loaded.rebuild.items():
            if state is not None:
                self.runs[run_id] = state
                self.run_defs[run_id] = state.extended or await self.snapshots.definition(state)
            subject = protocol.history_subject(run_id)
            for msg in await read_subject(self.js, protocol.HISTORY_STREAM, subject, after + 1):
                seq = msg.seq
                if seq <= loaded.seq:  # the later ones come with the rest of the history
                    await self._apply_message(msg, seq)
        self.counters["runs_restored"] = len(loaded.states)
        self.counters["runs_rebuilt"] = len(loaded.rebuild)
        return loaded.seq + 1

    async def _started_before(self, run_id: str, seq: int) -> bool:
        """Whether a run not in memory began before ``seq``: a ``workflow.started`` sent
        again, after a snapshot restart left the run's end out of memory. Its history
        subject's first message says (one request; only after a snapshot restart)."""
        if run_id in self._gone or run_id in self.recent:
            return self._repeated(run_id, seq)
        if not (self.restored_from or self.evicts) or not seq:
            return False
        if self.replaying and not self.restored_from:
            return False  # a whole replay has seen every start so far
        first = await self._first_seq(run_id)
        return first is not None and first < seq and self._repeated(run_id, seq)

    async def _first_seq(self, run_id: str) -> int | None:
        """The sequence of the run's first history message; None when it has none."""
        subject = protocol.history_subject(run_id)
        try:
            msg = await self.js.get_msg(protocol.HISTORY_STREAM, seq=1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        return msg.seq

    def _repeated(self, run_id: str, seq: int) -> bool:
        self.counters["starts_repeated"] += 1
        log.warning("run %s started again at history message %s: ignored", run_id, seq)
        return True

    async def _reopened(self, run_id: str, seq: int) -> RunState | None:
        """A run not in memory that an event reopens (a dead-letter replay of a run that
        ended before the checkpoint a restart began after), rebuilt from its history
        before ``seq``; None when its history has no start."""
        found = await self._from_history(run_id, seq)
        if found is None:
            return None
        state, defn = found
        self.runs[run_id] = state
        self.run_defs[run_id] = defn
        self.counters["runs_rebuilt"] += 1
        return state

    async def _ended_run(self, run_id: str) -> RunState | None:
        """A run not in memory that ended (after a snapshot restart, every run that has
        not is in memory): its state from its history; None when it never started."""
        if run_id in self.recent:
            return self.recent[run_id]
        if not (self.restored_from or self.evicts):
            return None
        if await self._first_seq(run_id) is None:
            return None
        found = await self._from_history(run_id)
        return found[0] if found is not None else None

    async def _from_history(
        self, run_id: str, before: int = 0
    ) -> tuple[RunState, WorkflowDef] | None:
        """A run's state and definition folded from its history (the events before
        ``before``; 0: all), without its actions; None when its history has no start."""
        state: RunState | None = None
        defn: WorkflowDef | None = None
        subject = protocol.history_subject(run_id)
        for msg in await read_subject(self.js, protocol.HISTORY_STREAM, subject):
            at = msg.seq
            if before and at >= before:
                break
            try:
                event = protocol.history_event(msg.data, msg.subject, at)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not an event: replay skips it too
            if state is None:
                if event.type != protocol.WORKFLOW_STARTED:
                    continue
                h, defn = await self.defs.for_started(event.payload)
                if isinstance(event.payload, dict) and not event.payload.get("def_hash"):
                    event.payload["def_hash"] = h
                state, _ = start(defn, event)
            else:
                state, _ = advance(state.extended or defn, state, event)
        if state is None or defn is None:
            return None
        return state, state.extended or defn
