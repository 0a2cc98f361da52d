"""Retention of finished runs' records and payloads seen from the engine: ``prune`` and the
hourly pass, a mixin of :class:`~dagnats_nb.facade.engine.Engine` (what a pass reads and
removes: :mod:`dagnats_nb.runtime.retention`).

What runs when: the engine whose orchestrator runs (an embedded engine; an engine on a NATS
where no Go engine orchestrates) prunes, once ``retention.FIRST_DELAY`` seconds after its
start and then every ``retention.INTERVAL`` seconds, when ``runs_max_age`` is set (``0``:
never). An attached engine, or one beside a Go orchestrator, never prunes: the Go engine
keeps its own records. ``eng.prune()`` runs a pass at once in the orchestrating engine.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dagnats_nb.dag.durations import parse_duration
from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade.twins import twins
from dagnats_nb.runtime import retention


def _seconds(max_age: float | str | timedelta) -> float:
    """``max_age`` (seconds, a timedelta or a Go duration such as ``"720h"``) in seconds."""
    if isinstance(max_age, bool):
        raise DagnatsError(f"prune: max_age {max_age!r} is not a duration")
    if isinstance(max_age, int | float):
        seconds = float(max_age)
    elif isinstance(max_age, timedelta):
        seconds = max_age.total_seconds()
    else:
        seconds = parse_duration(max_age, where="prune: max_age").total_seconds()
    if seconds < 0:
        raise DagnatsError(f"prune: max_age {max_age!r} is negative")
    return seconds


class Retention:
    """Pruning of expired run records and payloads (see the module docstring)."""

    pruner: retention.Pruner | None = None

    def _holds(self, run_id: str) -> bool:
        """Whether our orchestrator holds ``run_id`` as not ended."""
        orchestrator = self.orchestrator
        state = orchestrator.runs.get(run_id) if orchestrator is not None else None
        return state is not None and not state.terminal

    def _may_prune(self) -> bool:
        return self.orchestrator is not None and self._paused is None and not self._closing

    async def _start_pruner(self) -> None:
        """Schedule the passes (only when our orchestrator runs and ``runs_max_age`` is set)."""
        if self.orchestrator is None:
            return
        self.pruner = retention.Pruner(self._nc, self.jetstream_api, self._holds, self._may_prune)
        age = self.settings.runs_max_age
        if age:
            self.pruner.start(age.total_seconds())

    async def _stop_pruner(self) -> None:
        if self.pruner is not None:
            await self.pruner.stop()

    async def _prune(
        self, max_age: float | str | timedelta | None = None, *, limit: int = retention.MAX_READ
    ) -> dict[str, Any]:
        """Prune now what the hourly pass prunes: the ``workflow_runs`` records of runs that
        ended (completed, failed, cancelled) more than ``max_age`` ago (default the setting
        ``runs_max_age``; seconds, a timedelta or ``"720h"``; ``0`` or an unset setting:
        nothing), and their ``payloads`` objects. Runs not ended stay, however old. A dict:
        ``records_read``, ``records_pruned``, ``payloads_read``, ``payloads_deleted``,
        ``payload_bytes``, ``complete`` (False when ``limit`` messages read stopped a scan:
        the next pass goes on), ``max_age``, ``cutoff``, ``seconds``. Only in the engine whose
        orchestrator runs (not an attached one, not beside a Go orchestrator)."""
        self._need_orchestrator("prune")
        if self._paused is not None:
            raise DagnatsError("cannot prune while the engine is paused: resume() it first")
        if max_age is None:
            age = self.settings.runs_max_age
            seconds = age.total_seconds() if age else 0.0
        else:
            seconds = _seconds(max_age)
        if limit < 1:
            raise DagnatsError(f"prune: limit must be at least 1, not {limit!r}")
        return await self.pruner.prune(seconds, limit)

    prune, prune_async = twins(_prune)
