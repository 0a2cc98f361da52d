"""The ``workflow_runs`` records of the runs an orchestrator drives (``wire.runs``: Go's
run record under ``run.{run_id}``), written off the step's path. Every change of a running
run makes its record due ``DELAY`` seconds later (a change while one is due keeps that
time), and due records are put in concurrent batches, each with the run's latest state; a
run that ended is written at once (its waiters are woken after), replacing what was due.
So a run shorter than ``DELAY`` costs one put, and ``dagnats run list / status`` follow a
longer one while it runs, at most ``DELAY`` behind, at most one put per ``DELAY``. The
history stays the authority: a record that cannot be written (a full store, a lost bucket)
is logged once and written again ``RETRY`` seconds later, or with the run's next change,
until it is; ``stored`` hears of each ended run's record written so (the orchestrator
evicts the run then)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, NotFoundError

from dagnats_nb.dag.events import dumps
from dagnats_nb.dag.state import RUN_TERMINAL, RunState
from dagnats_nb.wire.runs import read_record, record_state, run_key, run_record

log = logging.getLogger("dagnats_nb.runtime.records")

DELAY = 1.0  # seconds from a run's start (or reopening) to its record
TICK = 0.25  # seconds between looks for due records
BATCH = 512  # puts in flight at once
RETRY = 5.0  # seconds from a failed put to the next try


class RunRecords:
    """Batched writer of run records into a ``workflow_runs`` KV bucket."""

    def __init__(self, kv, stored: Callable[[RunState], None] | None = None) -> None:
        self.kv = kv
        self.stored = stored
        self._due: dict[str, tuple[RunState, float]] = {}  # run id -> (state, due at)
        self._task: asyncio.Task | None = None
        self._failing: set[str] = set()  # runs whose last put failed (logged once)
        self._closed = False
        self.written = 0
        self.failed = 0

    def due(self, state: RunState) -> None:
        """Write ``state`` as its run's record ``DELAY`` seconds from now (a later state
        of the run replaces it, keeping the time). The state must not change afterwards:
        the core's states never do."""
        old = self._due.get(state.run_id)
        self._schedule(state, old[1] if old else asyncio.get_running_loop().time() + DELAY)

    def _schedule(self, state: RunState, at: float) -> None:
        self._due[state.run_id] = (state, at)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def now(self, state: RunState) -> bool:
        """Write ``state`` as its run's record at once (a run that ended: whoever waits
        for it reads its record next); whether it was written."""
        self._due.pop(state.run_id, None)
        return await self._put([state]) == 1

    async def ended(self, run_id: str) -> RunState | None:
        """The state of a run that ended, from its record; None when it has none or it
        says the run has not ended."""
        try:
            raw = json.loads((await self.kv.get(run_key(run_id))).value)
        except (KeyNotFoundError, NotFoundError, ValueError, TypeError, RecursionError):
            return None
        state = record_state(raw)
        if state is not None:
            return state
        summary = read_record(raw)  # Go's, or an older record: what it says
        if summary is None or summary["status"] not in RUN_TERMINAL:
            return None
        return RunState(
            run_id,
            summary.get("workflow") or "",
            summary.get("version") or "",
            "",
            None,
            0.0,
            status=summary["status"],
            error=summary.get("error"),
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._due:
            await asyncio.sleep(TICK)
            now = loop.time()
            ready = [rid for rid, (_, at) in self._due.items() if at <= now]
            await self._put_all([self._due.pop(rid)[0] for rid in ready], tell=True)

    async def flush(self) -> None:
        """Put every due record now."""
        states = [state for state, _ in self._due.values()]
        self._due.clear()
        await self._put_all(states)

    async def _put_all(self, states: list[RunState], tell: bool = False) -> None:
        for i in range(0, len(states), BATCH):
            await self._put(states[i : i + BATCH], tell)

    async def _put(self, states: list[RunState], tell: bool = False) -> int:
        results = await asyncio.gather(
            *(self.kv.put(run_key(s.run_id), dumps(run_record(s))) for s in states),
            return_exceptions=True,
        )
        written = 0
        for state, result in zip(states, results, strict=True):
            if isinstance(result, BaseException):
                self._failed(state, result)
                continue
            written += 1
            self._failing.discard(state.run_id)
            if tell and self.stored is not None and state.status in RUN_TERMINAL:
                self.stored(state)
        self.written += written
        return written

    def _failed(self, state: RunState, error: BaseException) -> None:
        """Try again ``RETRY`` seconds from now, unless a later state is due already."""
        self.failed += 1
        if state.run_id not in self._failing:
            self._failing.add(state.run_id)
            log.warning(
                "cannot write the record of run %s: %s (trying again every %g s)",
                state.run_id,
                error,
                RETRY,
            )
        if not self._closed and state.run_id not in self._due:
            self._schedule(state, asyncio.get_running_loop().time() + RETRY)

    async def close(self) -> None:
        """Write what is due, and stop."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
