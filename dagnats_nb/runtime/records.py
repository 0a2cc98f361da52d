"""The ``workflow_runs`` records of the runs an orchestrator drives (``wire.runs``: Go's
run record under ``run.{run_id}``), written off the step's path: a run's record is due when
it starts or is reopened, and the due records are put every ``EVERY`` seconds in one
concurrent batch, each with the run's latest state; a run that ended is written at once
(its waiters are woken after), replacing what was due. A run that starts and ends between
two batches costs one put. The history stays the authority: a record that cannot be written is
logged and written again with the run's next change."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dagnats_nb.dag.events import dumps
from dagnats_nb.dag.state import RunState
from dagnats_nb.wire.runs import run_key, run_record

log = logging.getLogger("dagnats_nb.runtime.records")

EVERY = 0.25  # seconds between batches
BATCH = 512  # puts in flight at once


class RunRecords:
    """Batched writer of run records into a ``workflow_runs`` KV bucket."""

    def __init__(self, kv) -> None:
        self.kv = kv
        self._due: dict[str, RunState] = {}
        self._task: asyncio.Task | None = None
        self.written = 0

    def due(self, state: RunState) -> None:
        """Write ``state`` as its run's record with the next batch (the latest state of a
        run wins). The state must not change afterwards: the core's states never do."""
        self._due[state.run_id] = state
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def now(self, state: RunState) -> None:
        """Write ``state`` as its run's record at once (a run that ended: whoever waits
        for it reads its record next)."""
        self._due.pop(state.run_id, None)
        await self._put([state])

    async def _run(self) -> None:
        while self._due:
            await asyncio.sleep(EVERY)
            await self.flush()

    async def flush(self) -> None:
        """Put every due record now."""
        while self._due:
            batch, self._due = self._due, {}
            states = list(batch.values())
            for i in range(0, len(states), BATCH):
                await self._put(states[i : i + BATCH])

    async def _put(self, states: list[RunState]) -> None:
        results = await asyncio.gather(
            *(self.kv.put(run_key(s.run_id), dumps(run_record(s))) for s in states),
            return_exceptions=True,
        )
        for state, result in zip(states, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("cannot write the record of run %s: %s", state.run_id, result)
            else:
                self.written += 1

    async def close(self) -> None:
        """Write what is due, and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
