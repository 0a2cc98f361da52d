"""Reading runs, steps, events, outputs, dead letters and LLM usage: a mixin of
:class:`~dagnats_nb.facade.engine.Engine`.

Each read is a private coroutine run on the engine loop, the one thread that changes the
orchestrator's state, so what it returns is a snapshot taken at one moment (a run's
``RunState`` is copy-on-write: the engine replaces it, never changes it). :func:`twins`
makes its public pair; a DataFrame is built from the snapshot in the caller's thread. An
attached engine (``Engine.connect``) holds no run state: it reads the ``workflow_runs`` KV
summaries and the runs' history instead.

A run this engine does not hold in memory (an attached engine's, or, once finished runs
leave memory, one that ended) is read from its ``workflow_runs`` record where the record
says what memory would (``wire.runs.record_state``: one KV get, ~0.3 ms), else rebuilt
from its history (``_replayed``: ~4 ms and O(events)). The last ``RECENT`` records rebuilt
are kept, checked against the record's revision at each read.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

from nats.js.errors import KeyNotFoundError, NotFoundError

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.advance import replay
from dagnats_nb.dag.state import RunState
from dagnats_nb.errors import RunError, WorkflowError
from dagnats_nb.facade.run import Run
from dagnats_nb.facade.twins import twins
from dagnats_nb.facade.views import events_frame, runs_frame, steps_frame
from dagnats_nb.runtime import dead_letters
from dagnats_nb.runtime.dead_letters import dead_letters_frame, read_dead_letters
from dagnats_nb.transport.reading import read_subject
from dagnats_nb.transport.stores import kv_keys
from dagnats_nb.wire import protocol
from dagnats_nb.wire.runs import read_record, record_output, record_state, run_key

log = logging.getLogger("dagnats_nb")

RECENT = 256  # runs rebuilt from their records kept for the next read
_Stored = tuple[WorkflowDef, RunState, dict[str, Any] | None]  # None: rebuilt from history


def _steps_frame(snapshot: tuple[WorkflowDef, RunState]):
    return steps_frame(*snapshot)


def _usage_frame(records: list[dict[str, Any]]):
    from dagnats_nb.llm import usage_frame  # the llm package loads when used

    return usage_frame(records)


def _calls_frame(records: list[dict[str, Any]]):
    from dagnats_nb.llm import calls_frame

    return calls_frame(records)


class Reads:
    """Read-only views of runs (see the module docstring)."""

    # -- runs ----------------------------------------------------------------------------

    async def _runs(self) -> list[RunState | dict[str, Any]]:
        """All runs as a DataFrame (run_id, workflow, status, started_at, ended_at, error...)."""
        if self.orchestrator is not None:
            held = dict(self.orchestrator.runs)
            # the runs memory holds, and the records of those it does not (finished runs
            # that left it): one KV get each, O(finished); a run index replaces this later
            # (design/history-at-scale.md (c), DAGNATS_RUN_INDEX)
            return [*held.values(), *await self._kv_runs(skip=held)]
        return await self._kv_runs()

    runs, runs_async = twins(_runs, runs_frame)

    async def _run_known(self, run_id: str) -> bool:
        """Whether the run exists: in memory, among the runs that just left it, in its
        record or its history (a trigger or webhook delivered again starts nothing)."""
        o = self.orchestrator
        if o is not None and (run_id in o.runs or o.known_ended(run_id) is not None):
            return True
        if await self._record(run_id) is not None:
            return True
        subject = protocol.history_subject(run_id)
        try:
            await self._js.get_msg(protocol.HISTORY_STREAM, seq=1, subject=subject, next=True)
        except NotFoundError:
            return False
        return True

    async def _kv_runs(self, skip: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The summaries of the runs the ``workflow_runs`` records hold (``read_record``,
        exact times), but of those ``skip`` names."""
        skip = skip or {}
        kv = await self._runs_kv()
        try:
            keys = await kv_keys(self._js, "workflow_runs")
        except NotFoundError:
            return []
        out: dict[str, dict[str, Any]] = {}
        for key in keys:
            if key.removeprefix("run.") in skip:
                continue
            try:
                summary = read_record(json.loads((await kv.get(key)).value), exact=True)
            except (KeyNotFoundError, NotFoundError, ValueError, TypeError, RecursionError):
                continue  # deleted while listed, or not JSON (not ours)
            if summary is None or summary["run_id"] in skip:
                continue
            if key.startswith("run.") or summary["run_id"] not in out:
                out[summary["run_id"]] = summary
        return list(out.values())

    async def _runs_kv(self):
        """The ``workflow_runs`` bucket (its handle kept: opening it asks the server)."""
        kept = self.__dict__.get("_runs_kv_handle")
        if kept is None or kept[0] is not self._js:
            kept = (self._js, await self._js.key_value("workflow_runs"))
            self.__dict__["_runs_kv_handle"] = kept
        return kept[1]

    async def _record(self, run_id: str) -> tuple[int, dict[str, Any] | None] | None:
        """The run's ``workflow_runs`` record as ``(revision, value)``: under Go's key,
        else dagnats-nb < 0.2's bare run id; value None when it is no run record (not JSON,
        say: not ours). None when the run has no record."""
        kv = await self._runs_kv()
        found = None
        for key in (run_key(run_id), run_id):
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                continue
            try:
                raw = json.loads(entry.value)
            except (ValueError, TypeError, RecursionError):
                raw = None
            if read_record(raw) is not None:
                return entry.revision, raw
            found = found or (entry.revision, None)
        return found

    def _recent_records(self) -> OrderedDict[str, tuple[int, _Stored]]:
        """Run id -> (record revision, what was rebuilt from it), the last ``RECENT``."""
        return self.__dict__.setdefault("_recent_records_lru", OrderedDict())

    async def _stored(self, run_id: str) -> _Stored | None:
        """A run this engine does not hold in memory, as memory would: its definition and
        state rebuilt from its record (``record_state``) with the record; from its history
        (record None) when the record cannot say (Go's or an older one, a running run's,
        not JSON). None when the run has no record (unknown, or its start not applied)."""
        found = await self._record(run_id)
        if found is None:
            return None
        revision, raw = found
        recent = self._recent_records()
        hit = recent.get(run_id)
        if hit is not None and hit[0] == revision:
            recent.move_to_end(run_id)
            return hit[1]
        stored: _Stored | None = None
        state = record_state(raw)
        if state is not None:
            defn = await self.defs.for_run(run_id, state.workflow, state.def_hash)
            state = record_state(raw, defn)  # again, on it: the steps planners added
            if state is not None:
                stored = (state.extended or defn, state, raw)
        if stored is None:
            try:
                stored = (*await self._replayed(run_id), None)
            except (RunError, WorkflowError):  # a record, no (readable) history
                return None
        if stored[1].terminal:  # a running run's record is behind it: never kept
            recent[run_id] = (revision, stored)
            while len(recent) > RECENT:
                recent.popitem(last=False)
        return stored

    async def _run_state(self, run_id: str) -> dict[str, Any] | None:
        """The run's summary: run_id, workflow, status, output, error and, in the engine
        that runs it, ``state`` (a ``dag.state.RunState``); None when unknown."""
        if self.orchestrator is not None:
            state = self.orchestrator.runs.get(run_id)
            if state is None:  # not in memory: a run that ended, from its record
                stored = await self._stored(run_id)
                if stored is None:
                    return None
                state = stored[1]
            return {
                "run_id": run_id,
                "workflow": state.workflow,
                "status": state.status,
                "output": state.output,
                "error": state.error,
                "state": state,
            }
        return await self._kv_run(run_id)

    run_state, run_state_async = twins(_run_state)

    async def _kv_run(self, run_id: str) -> dict[str, Any] | None:
        """An attached engine's view of a run: the KV summary written when it ended, else
        ``running`` while its history exists."""
        found = await self._record(run_id)
        if found is not None and found[1] is not None:
            return read_record(found[1])
        # no record, or one that is not JSON (not ours): the history tells
        first = await self._history(run_id, limit=1)
        if not first:
            return None
        workflow = protocol.started_workflow(first[0].payload)
        return {"run_id": run_id, "workflow": workflow, "status": "running", "error": None}

    async def _run_status(self, run_id: str) -> str | None:
        summary = await self._run_state(run_id)
        return summary["status"] if summary else None

    async def _get_run(self, run_id: str) -> Run:
        """A handle on an existing run."""
        summary = await self._run_state(run_id)
        if summary is None and self.orchestrator is not None:
            summary = await self._kv_run(run_id)  # just started: its start not applied yet
        if summary is None:
            raise RunError(f"no run with id {run_id}: list runs with eng.runs()")
        return Run(self, run_id, summary["workflow"])

    get_run, get_run_async = twins(_get_run)

    async def _run_output(self, run_id: str) -> Any:
        """A run's output (None until it completes): the single terminal step's output, or
        ``{step_id: output}``; large values are read back from the payload store."""
        summary = await self._run_state(run_id)
        if summary is None:
            return None
        if "state" not in summary and summary.get("status") == "completed":
            stored = await self._stored(run_id)  # a KV summary holds no output
            if stored is None:
                return await self._history_output(run_id)
            summary = {"output": stored[1].output}
        value = summary.get("output")
        return await self.payloads.expand(value, run_id) if value is not None else None

    run_output, run_output_async = twins(_run_output)

    async def _history_output(self, run_id: str) -> Any:
        """A completed run's output read from its history (what an attached engine, which
        holds no run state, shows): the ``workflow.completed`` event's, else rebuilt."""
        events = await self._history(run_id)
        done = next((e for e in reversed(events) if e.type == protocol.WORKFLOW_COMPLETED), None)
        if done is None:
            return None
        payload = done.payload if isinstance(done.payload, dict) else {}
        if "output" in payload:
            return await self.payloads.expand(payload["output"], run_id)
        _, defn = await self.defs.for_started(events[0].payload)
        return await self.payloads.expand(replay(defn, events).output, run_id)

    # -- steps and events ----------------------------------------------------------------

    async def _steps(self, run_id: str) -> tuple[WorkflowDef, RunState]:
        """A run's steps as a DataFrame (step_id, task, type, status, attempt, times,
        error); an attached engine rebuilds them from the run's history."""
        if self.orchestrator is not None:
            state = self.orchestrator.runs.get(run_id)
            if state is not None:
                return self.orchestrator.run_defs[run_id], state
        stored = await self._stored(run_id)
        if stored is None:  # just started (its start not applied yet), or unknown here
            return await self._replayed(run_id)
        return stored[0], stored[1]

    steps, steps_async = twins(_steps, _steps_frame)

    async def _replayed(self, run_id: str) -> tuple[WorkflowDef, RunState]:
        """The run's definition and its state rebuilt from its history."""
        events = await self._history(run_id)
        if not events or events[0].type != protocol.WORKFLOW_STARTED:
            raise RunError(f"no history for run {run_id}: list runs with eng.runs()")
        _, defn = await self.defs.for_started(events[0].payload)
        state = replay(defn, events)
        return state.extended or defn, state

    async def _events(self, run_id: str) -> list[protocol.Event]:
        """A run's history as a DataFrame (seq, time, type, step_id, attempt, worker_id...)."""
        return await self._history(run_id)

    events, events_async = twins(_events, events_frame)

    async def _history(self, run_id: str, limit: int | None = None) -> list[protocol.Event]:
        """A run's history: its first ``limit`` events (all by default), in order, as
        ``wire.protocol.Event`` objects (:meth:`events` is the same as a DataFrame)."""
        subject = protocol.history_subject(run_id)
        out: list[protocol.Event] = []
        start = 0
        while True:
            want = None if limit is None else limit - len(out)
            msgs = await read_subject(self._js, protocol.HISTORY_STREAM, subject, start, want)
            for msg in msgs:
                try:
                    out.append(protocol.Event.decode(msg.data, seq=msg.seq))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    # not an event (any client may publish there): left out, as replay does
                    log.warning("history message %s of run %s left out: %s", msg.seq, run_id, exc)
            if want is None or len(out) >= limit or len(msgs) < want:
                return out
            start = msgs[-1].seq + 1  # messages left out: read on for the limit

    history, history_async = twins(_history)

    async def _step_output(self, run_id: str, step_id: str) -> Any:
        """One step's output (a map step: the list of its elements' outputs): a finished
        run's from its record (finished runs keep only the run's output in memory), else
        rebuilt from the run's history."""
        held = self.orchestrator.runs.get(run_id) if self.orchestrator is not None else None
        stored = None if held is not None and not held.terminal else await self._stored(run_id)
        if stored is not None and held is not None and stored[1].ended_at != held.ended_at:
            stored = None  # the record of an earlier end (a reopened run's): not yet this one
        if stored is None:  # running, or no record says
            defn, state = await self._replayed(run_id)
            raw = None
        else:
            defn, state, raw = stored
        defn.step(step_id)  # names the workflow's steps when step_id is unknown
        st = state.step(step_id)
        if st.status != "completed":
            raise RunError(f"step '{step_id}' of run {run_id} is {st.status}: it has no output")
        value = st.output if raw is None else record_output(raw, step_id)
        return await self.payloads.expand(value, run_id)

    step_output, step_output_async = twins(_step_output)

    # -- dead letters --------------------------------------------------------------------

    async def _dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` dead letters (steps that failed for good) as a DataFrame:
        seq, failed_at, workflow, task, run_id, step_id, map_index, attempts, error."""
        return await self._dlq(limit=limit)

    dead_letters, dead_letters_async = twins(_dead_letters, dead_letters_frame)

    async def _dlq(
        self, workflow: str | None = None, run: str | None = None, *, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Dead letters as a DataFrame, newest last: the last ``limit`` of DEAD_LETTERS,
        of one workflow and/or one run when named."""
        letters = await read_dead_letters(self._js, limit)
        return dead_letters.select(letters, workflow, run)

    dlq, dlq_async = twins(_dlq, dead_letters_frame)

    async def _dlq_replay(
        self,
        seq: int | None = None,
        *,
        run: str | None = None,
        dry_run: bool = False,
        wait: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Replay a dead letter (by ``seq``, or the newest of ``run``): its failed run resumes
        at the failed step, as a new attempt. Returns what was (or, ``dry_run``, would be)
        replayed and the run's status after up to ``wait`` seconds."""
        return await dead_letters.replay(self._js, self._run_status, seq, run, dry_run, wait)

    dlq_replay, dlq_replay_async = twins(_dlq_replay)

    # -- llm usage -----------------------------------------------------------------------

    async def _llm_usage(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """LLM calls per run, step and model (calls, tokens, latency p50/p95, errors,
        retries) as a DataFrame, read from TELEMETRY; ``llm_calls`` has one row per call."""
        return await self._llm_records(run_id)

    llm_usage, llm_usage_async = twins(_llm_usage, _usage_frame)

    async def _llm_calls(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every recorded LLM call as a DataFrame (status, latency_ms, tokens, error...)."""
        return await self._llm_records(run_id)

    llm_calls, llm_calls_async = twins(_llm_calls, _calls_frame)

    async def _llm_records(self, run_id: str | None) -> list[dict[str, Any]]:
        from dagnats_nb.llm import read_calls

        if self.llm is not None:  # this engine's calls not yet stored
            await self.llm.recorder.flush(wait=True)
        return await read_calls(self._js, run_id)
