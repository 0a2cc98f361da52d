"""Task types no worker serves, named before a run waits on them in silence: a mixin of
:class:`~dagnats_nb.facade.engine.Engine`.

A step's task is served when this engine has a handler for it (``@eng.task``,
``add_handler``), when it is ``llm`` and the engine's built-in llm worker is on, or when a
live entry of the ``workers`` KV (any process's: ``dagnats worker``, another kernel, a Go
worker) lists it. Three moments say so with an :class:`~dagnats_nb.errors.UnservedTaskWarning`
in the caller's thread:

- ``register``, except within :data:`SETUP_QUIET` seconds of the engine's start (or
  connect) or of its last handler added: a notebook or script that declares a workflow
  before its handlers is setting up, not forgetting one;
- the start of a run (``start_run``, ``run``): always (``Run.unserved`` lists them);
- ``Engine.start``, once, when runs replayed from the history wait on such tasks.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterable

from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.dag.state import RETRYING, STEP_ACTIVE, WAITING
from dagnats_nb.dag.validate import _TASK_TYPES
from dagnats_nb.errors import UnservedTaskWarning
from dagnats_nb.facade.twins import twins
from dagnats_nb.wire.workers import read_entry

SETUP_QUIET = 30.0  # seconds after start/connect or a handler added: register does not warn
SERVED_TTL = 2.0  # seconds one read of the workers KV is reused
_WAITING = STEP_ACTIVE | {RETRYING, WAITING}
_FILES = (".json", ".yaml", ".yml")  # a workflow file's name, not a registered workflow's


def task_types(defn: WorkflowDef) -> list[str]:
    """The task types a worker runs for ``defn``'s steps."""
    return sorted({s.task for s in defn.steps if s.task and s.type in _TASK_TYPES})


def _quoted(tasks: Iterable[str]) -> str:
    tasks = list(tasks)
    return ("task " if len(tasks) == 1 else "tasks ") + ", ".join(f"'{t}'" for t in tasks)


def _remedy(tasks: list[str]) -> str:
    other = [t for t in tasks if t != "llm"]
    parts = []
    if other:
        parts.append(
            f"define a handler (@dn.task('{other[0]}') or @eng.task('{other[0]}')) "
            "or start `dagnats worker MODULE`"
        )
    if "llm" in tasks:
        parts.append("turn the built-in llm worker on (llm_enabled)")
    return "; ".join(parts)


def unserved_message(workflow: str, tasks: list[str]) -> str:
    """One line: which of ``workflow``'s tasks no worker serves, and what to do."""
    return (
        f"workflow '{workflow}': no worker serves {_quoted(tasks)}, so its steps wait: "
        f"{_remedy(tasks)}"
    )


def recovered_message(waiting: dict[str, int]) -> str:
    """One line for runs replayed at start that wait on tasks no worker serves."""
    counts = ", ".join(f"'{t}' ({n} run{'s' if n != 1 else ''})" for t, n in waiting.items())
    return (
        f"runs recovered from the history wait on {'a task' if len(waiting) == 1 else 'tasks'} "
        f"no worker serves: {counts}: {_remedy(sorted(waiting))}"
    )


def hint(message: str, stacklevel: int) -> None:
    """Warn ``message`` as an UnservedTaskWarning at the frame ``stacklevel`` above the
    caller (1: the caller's line)."""
    warnings.warn(message, UnservedTaskWarning, stacklevel=stacklevel + 1)


class Hints:
    """Which task types no worker serves (see the module docstring)."""

    _quiet_until: float = 0.0  # monotonic time before which register does not warn
    _served_cache: tuple[float, frozenset[str]] | None = None
    _served_read: asyncio.Future | None = None  # the read of the workers KV under way

    def _setting_up(self) -> None:
        """The engine starts, connects or gets a handler: register keeps quiet a while."""
        self._quiet_until = time.monotonic() + SETUP_QUIET

    async def _missing(self, tasks: Iterable[str]) -> list[str]:
        """Those of ``tasks`` no live worker serves (see the module docstring)."""
        own = set(self.workers) | ({"llm"} if self.llm is not None else set())
        missing = set(tasks) - own
        if not missing:
            return []
        now = time.monotonic()
        if self._served_cache is None or now - self._served_cache[0] > SERVED_TTL:
            # one read for every start that asks meanwhile: 2,000 runs started at once
            # would otherwise open 2,000 KV watchers (and hit the consumer limit)
            if self._served_read is None or self._served_read.done():
                self._served_read = asyncio.ensure_future(self._read_served())
            served = await asyncio.shield(self._served_read)
        else:
            served = self._served_cache[1]
        return sorted(missing - served)

    async def _read_served(self) -> frozenset[str]:
        """The task types the live entries of the ``workers`` KV serve, kept as the cache
        the moment the read ends (not when its first waiter resumes: a start arriving in
        between would read again)."""
        gap = self.settings.health_worker_gap.total_seconds()
        wall = time.time()
        entries = [read_entry(w) for w in await self._workers()]
        served = frozenset(
            t
            for e in entries
            if e.heartbeat_at is None or wall - e.heartbeat_at <= gap
            for t in e.tasks
        )
        self._served_cache = (time.monotonic(), served)
        return served

    async def _unserved_tasks(self, workflow: str | WorkflowDef | dict) -> list[str]:
        """The task types of ``workflow``'s steps (a registered name, or a definition) that
        no live worker serves: no handler of this engine, not ``llm`` with the built-in llm
        worker on, in no live entry of the ``workers`` KV (every process's, Go's too). Its
        runs' steps of those tasks wait until one does."""
        text = workflow.strip() if isinstance(workflow, str) else ""
        if text and "\n" not in text and text[0] != "{" and not text.endswith(_FILES):
            defn = (await self.defs.get(workflow))[1]
        else:
            defn = load_workflow(workflow)
        return await self._missing(task_types(defn))

    unserved_tasks, unserved_tasks_async = twins(_unserved_tasks)

    async def _recovered_waiting(self) -> dict[str, int]:
        """Runs replayed from the history that wait on tasks no worker serves: task -> runs."""
        if self.orchestrator is None:
            return {}
        waiting: dict[str, set[str]] = {}
        for run_id, state in list(self.orchestrator.runs.items()):
            if state.terminal:
                continue
            defn = self.orchestrator.run_defs.get(run_id)
            if defn is None:
                continue
            defn = state.extended or defn
            for step in defn.steps:
                if not step.task or step.type not in _TASK_TYPES:
                    continue
                st = state.steps.get(step.id)
                if st is not None and st.status in _WAITING:
                    waiting.setdefault(step.task, set()).add(run_id)
        missing = await self._missing(waiting)
        return {t: len(waiting[t]) for t in missing}

    def _hint_recovered(self, stacklevel: int) -> None:
        """Warn once at start when recovered runs wait on tasks no worker serves."""
        try:
            waiting = self._call(self._recovered_waiting(), timeout=30)
        except Exception:  # a hint must never fail a start
            return
        if waiting:
            hint(recovered_message(waiting), stacklevel + 1)
