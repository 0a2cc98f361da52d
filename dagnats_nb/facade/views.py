"""Runs, steps and events as pandas DataFrames (read-only views of engine state)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.events import Event
from dagnats_nb.dag.state import RunState

RUN_COLUMNS = [
    "run_id",
    "workflow",
    "version",
    "status",
    "started_at",
    "ended_at",
    "duration_s",
    "error",
]
STEP_COLUMNS = [
    "step_id",
    "task",
    "type",
    "status",
    "attempt",
    "iteration",
    "items",
    "queued_at",
    "started_at",
    "ended_at",
    "duration_s",
    "worker_id",
    "error",
    "reused",  # a fork's step completed with its source run's output (eng.fork)
    "cached",  # its result came from the step cache (a map step: every item's)
]
EVENT_COLUMNS = ["seq", "time", "type", "step_id", "attempt", "worker_id", "payload", "cache"]


def _ts(value: float | str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    if isinstance(value, str):
        return pd.Timestamp(value)
    return pd.Timestamp(value, unit="s", tz="UTC")


def runs_frame(runs: Iterable[RunState | dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in runs:
        if isinstance(r, RunState):
            started, ended = _ts(r.started_at), _ts(r.ended_at)
            rows.append([r.run_id, r.workflow, r.version, r.status, started, ended, None, r.error])
        else:
            started, ended = _ts(r.get("started_at")), _ts(r.get("ended_at"))
            rows.append(
                [
                    r["run_id"],
                    r.get("workflow"),
                    r.get("version"),
                    r.get("status"),
                    started,
                    ended,
                    None,
                    r.get("error"),
                ]
            )
        if started is not None and ended is not None:
            rows[-1][6] = (ended - started).total_seconds()
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return df.sort_values("run_id", ignore_index=True)


def steps_frame(defn: WorkflowDef, state: RunState) -> pd.DataFrame:
    rows = []
    for step in defn.steps:
        st = state.step(step.id)
        items = f"{st.map.done}/{st.map.count}" if st.map is not None else None
        queued, started, ended = (
            _ts(st.queued_at or st.first_at),
            _ts(st.started_at),
            _ts(st.ended_at),
        )
        first = _ts(st.first_at)
        duration = (
            (ended - first).total_seconds() if ended is not None and first is not None else None
        )
        rows.append(
            [
                step.id,
                step.task,
                step.type,
                st.status,
                st.attempt,
                st.iteration,
                items,
                queued,
                started,
                ended,
                duration,
                st.worker_id or None,
                st.error,
                step.id in state.reused,
                _cached(step.id, st, state.cached),
            ]
        )
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def _cached(step_id: str, st: Any, cached: dict[str, int] | None) -> bool:
    """Whether the step's result came from the step cache (a map step: every item's)."""
    served = (cached or {}).get(step_id, 0)
    if st.map is None:
        return served > 0
    return bool(st.map.count) and served >= st.map.count


def events_frame(events: Iterable[Event]) -> pd.DataFrame:
    rows = [
        [
            e.seq,
            _ts(e.timestamp),
            e.type,
            e.step_id or None,
            e.attempt_number or None,
            e.worker_id or None,
            e.payload,
            e.cache,
        ]
        for e in events
    ]
    df = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    df["attempt"] = df["attempt"].astype("Int64")  # whole numbers, <NA> for run events
    return df
