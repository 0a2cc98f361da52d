"""What each ``%dagnats`` subcommand does, as plain Python calls on the default engine.

``%dagnats runs --status failed`` is ``console.runs(status="failed")``; the magic only parses
its line, calls one of these and displays or stores the result.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd

from dagnats_nb.adapters.notebook.compare import CompareView
from dagnats_nb.adapters.notebook.reprs import Status
from dagnats_nb.config import load_settings
from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.dag.fork import changed_steps
from dagnats_nb.errors import RunError, WorkflowError
from dagnats_nb.facade import default
from dagnats_nb.facade.engine import Engine
from dagnats_nb.facade.run import Run

WORKFLOW_COLUMNS = ["workflow", "version", "steps", "tasks", "roots", "terminal"]
CONFIG_COLUMNS = ["key", "value", "source"]


def start(
    data_dir: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    **settings: Any,
) -> Engine:
    """Start the kernel's engine (idempotent) and return it."""
    return default.start_engine(data_dir, config, **settings)


def stop() -> str:
    """Stop the kernel's engine."""
    return "engine stopped" if default.stop_engine() else "no engine was running"


def status() -> Status:
    """Connection, streams, workers and pending tasks (``.to_pandas()``: the streams)."""
    eng = default.engine(start=False)
    return Status(eng.status())


def workflows() -> pd.DataFrame:
    """The registered workflows: name, version, steps, tasks, roots, terminal steps."""
    eng = default.engine(start=False)
    rows = []
    for name in sorted(eng.workflows()):
        d = eng.workflow(name)
        tasks = ", ".join(dict.fromkeys(s.task for s in d.steps if s.task))
        ends = ", ".join(d.terminal_steps)
        rows.append([d.name, d.version, len(d.steps), tasks, ", ".join(d.roots), ends])
    return pd.DataFrame(rows, columns=WORKFLOW_COLUMNS)


def runs(
    workflow: str | None = None, status: str | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Runs, oldest first, optionally of one workflow / in one status / only the last N."""
    df = default.engine(start=False).runs()
    if workflow:
        df = df[df["workflow"] == workflow]
    if status:
        df = df[df["status"] == status]
    if limit is not None:
        df = df.tail(limit)
    return df.reset_index(drop=True)


def register(definition: WorkflowDef | dict | str) -> WorkflowDef:
    """Validate and store a workflow on the kernel's engine (starting it if needed)."""
    return default.engine().register(load_workflow(definition))


def latest(name: str) -> WorkflowDef | None:
    """The latest registered version of ``name`` on the kernel's engine (None: none yet)."""
    try:
        return default.engine().workflow(name)
    except WorkflowError:
        return None


def change_line(before: WorkflowDef | None, after: WorkflowDef) -> str | None:
    """One line naming what an edited workflow cell changed (None: new, or the same)."""
    if before is None or before.to_dict() == after.to_dict():
        return None
    old = set(before.step_ids)
    parts = [f"{sid} ({'edited' if sid in old else 'new'})" for sid in changed_steps(before, after)]
    parts += [f"{sid} (removed)" for sid in before.step_ids if sid not in set(after.step_ids)]
    what = ", ".join(parts) if parts else "its workflow settings"
    return (
        f"workflow '{after.name}' changed: {what}; `%dagnats rerun` runs the last run again "
        "from there, reusing the rest"
    )


def run(
    workflow: str | WorkflowDef | dict,
    input: Any = None,
    *,
    wait: bool = True,
    timeout: float | None = 300,
) -> Run:
    """Start a run; with ``wait`` block until it ends. A failed run is returned, not raised."""
    eng = default.engine(start=False)
    handle = eng.start_run(workflow, input)
    return handle.wait(timeout) if wait else handle


def fork(
    run_id: str | Run,
    from_step: str,
    input: Any = None,
    workflow: str | WorkflowDef | dict | None = None,
) -> Run:
    """Fork a run (``last``: the newest) from a step: a new run that reuses the outputs of
    the steps that do not depend on it (``eng.fork``)."""
    source = resolve_run(run_id)
    return source.engine.fork(source.id, from_step, input, workflow)


def rerun(
    run_id: str | Run, input: Any = None, workflow: str | WorkflowDef | dict | None = None
) -> Run:
    """Run a run (``last``: the newest) again after an edit, from what changed
    (``eng.rerun``)."""
    source = resolve_run(run_id)
    return source.engine.rerun(source.id, input, workflow)


def fork_line(run: Run) -> str:
    """What a fork reuses, in one line."""
    kept = ", ".join(run.reused) if run.reused else "no step"
    steps = run.fork_steps
    points = ("step " if len(steps) == 1 else "steps ") + ", ".join(f"'{s}'" for s in steps)
    return f"run {run.id} forked from {points} of run {run.forked_from}: reuses {kept}"


def compare(
    run_a: str | Run, run_b: str | Run, *, prices: dict[str, tuple[float, float]] | None = None
) -> CompareView:
    """Two runs (``last``: the newest) side by side: both DAGs with the changed steps
    outlined, the table of ``eng.compare`` (``.table``) and the diffs of the changed
    outputs (``.diffs``); static HTML in Jupyter."""
    a, b = resolve_run(run_a), resolve_run(run_b)
    return CompareView(a.engine.comparison(a.id, b.id, prices=prices))


def resolve_run(run_id: str | Run) -> Run:
    """A Run from a Run, its id, or ``last`` (the newest run)."""
    if isinstance(run_id, Run):
        return run_id
    eng = default.engine(start=False)
    if run_id == "last":
        df = eng.runs()
        if df.empty:
            raise RunError("there is no run yet: start one with %dagnats run WORKFLOW")
        run_id = str(df["run_id"].iloc[-1])
    deadline = time.monotonic() + 2.0  # a run started a moment ago may not be applied yet
    while True:
        try:
            return eng.get_run(str(run_id))
        except RunError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def events(run_id: str | Run) -> pd.DataFrame:
    """A run's history: seq, time, type, step_id, attempt, worker_id, payload."""
    run = resolve_run(run_id)
    return run.engine.events(run.id)


def steps(run_id: str | Run) -> pd.DataFrame:
    """A run's steps: step_id, task, type, status, attempt, items, times, error."""
    run = resolve_run(run_id)
    return run.engine.steps(run.id)


def cancel(run_id: str | Run) -> Run:
    """Cancel a run; it ends ``cancelled``."""
    run = resolve_run(run_id)
    if run.done:
        raise RunError(f"run {run.id} already ended {run.status}: nothing to cancel")
    run.cancel()
    return run


def decide(
    run_id: str,
    step_id: str,
    approve: bool,
    comment: str | None,
    by: str | None,
    wait: float = 0.0,
) -> dict[str, Any]:
    """Approve or reject a waiting approval step; the decision as recorded."""
    eng = default.engine(start=False)
    decide_ = eng.approve if approve else eng.reject
    return decide_(run_id, step_id, comment, by=by, wait=wait)


def dlq(
    limit: int = 1000, *, workflow: str | None = None, run: str | Run | None = None
) -> pd.DataFrame:
    """Dead letters (steps that failed for good): seq, time, workflow, task, run_id, step_id,
    attempts, error; of one workflow and/or run when named."""
    run_id = resolve_run(run).id if run is not None else None
    return default.engine(start=False).dlq(workflow, run_id, limit=limit)


def dlq_replay(
    seq: int | None = None, *, run: str | Run | None = None, dry_run: bool = False
) -> list[dict]:
    """Replay a dead letter (``seq``, or the newest of ``run``): the run resumes."""
    run_id = resolve_run(run).id if run is not None else None
    return default.engine(start=False).dlq_replay(seq, run=run_id, dry_run=dry_run)


def triggers() -> pd.DataFrame:
    """The cron and subject triggers (and webhooks): id, workflow, kind, schedule, timezone,
    enabled, last fired, next due."""
    return default.engine(start=False).triggers()


def trigger(action: str, trigger_id: str) -> dict[str, Any]:
    """Switch a trigger on (``action="enable"``) or off (``"disable"``); its record."""
    eng = default.engine(start=False)
    return eng.enable_trigger(trigger_id) if action == "enable" else eng.disable_trigger(trigger_id)


def config() -> pd.DataFrame:
    """Every setting with its value and where it came from (the running engine's, else
    what ``%dagnats start`` would use)."""
    eng = default.current()
    settings = eng.settings if eng is not None else load_settings()
    rows = [[k, "" if v is None else str(v), src] for k, v, src in settings.describe()]
    return pd.DataFrame(rows, columns=CONFIG_COLUMNS)


def stats(what: str, *, wide: bool = False, **params: Any) -> Any:
    """The engine's read-only views: streams, lag, kv, account, health, monitor, sizing.
    ``wide``: a table displays every column; ``include_internal=True`` (lag): the
    ephemeral consumers too."""
    eng = default.engine(start=False)
    if what == "monitor":
        return eng.monitor(params.pop("endpoint"), **params)
    if what == "sizing":
        return eng.sizing(params.pop("workflow"), **params)
    view = {
        "streams": eng.stream_stats,
        "lag": eng.consumer_lag,
        "kv": eng.kv_stats,
        "account": eng.account,
        "health": eng.health,
    }[what]
    df = view(**params)
    return df.wide() if wide else df
