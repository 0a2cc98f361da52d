"""A background sampler of the engine's numbers, and plots of what it recorded.

``eng.sample(every="1s")`` starts one on the engine loop; ``sampler.frame()`` is the
time series (one row per sample, wide columns such as ``bytes.WORKFLOW_HISTORY`` and
``pending.worker-llm``, plus ``runs_per_s`` / ``steps_per_s`` derived from the
orchestrator's counters); ``sampler.figure()`` draws it with matplotlib's object API (no
pyplot state, so it is safe from any thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import pandas as pd

from dagnats_nb.dag.state import RUN_TERMINAL
from dagnats_nb.wire import protocol

from ..errors import DagnatsError
from . import stats

log = logging.getLogger("dagnats_nb.observe")


class Sampler:
    """Records a row of engine numbers every ``every`` seconds (the last ``keep`` rows)."""

    def __init__(
        self,
        collect: Callable[[], Awaitable[dict[str, Any]]],
        every: float,
        keep: int = 3600,
    ) -> None:
        if every <= 0:
            raise DagnatsError(f"every = {every}: must be a positive number of seconds")
        self.collect, self.every = collect, every
        self.rows: deque[dict[str, Any]] = deque(maxlen=keep)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.rows.append(await self.collect())
            except Exception as exc:  # a failed sample is a gap, not a dead sampler
                log.warning("sample failed: %s", exc)
            await asyncio.sleep(max(0.0, self.every - (time.monotonic() - started)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def frame(self) -> pd.DataFrame:
        """The samples, indexed by time, with per-second rates of the counters."""
        df = pd.DataFrame(list(self.rows))
        if df.empty:
            return df
        df = df.set_index("time").sort_index()
        seconds = df.index.to_series().diff().dt.total_seconds()
        for total, rate in (("runs_ended", "runs_per_s"), ("steps_completed", "steps_per_s")):
            if total in df:
                df[rate] = (df[total].diff() / seconds).fillna(0.0)
        return df

    def figure(self):
        """Stream bytes, consumer pending, runs and steps per second, dead letters."""
        return plot(self.frame())


async def collect_row(nc, orchestrator, api: str = "$JS.API") -> dict[str, Any]:
    """One sample: stream sizes, consumer pending, DEAD_LETTERS, orchestrator counters
    (``api``: the JetStream API prefix, ``$JS.<domain>.API`` for a domain)."""
    row: dict[str, Any] = {"time": pd.Timestamp.now(tz="UTC")}
    for s in await stats.stream_rows(nc, api=api):
        if s["kind"] == "engine":
            row[f"bytes.{s['stream']}"] = s["bytes"]
            row[f"messages.{s['stream']}"] = s["messages"]
    for c in await stats.consumer_rows(nc, [protocol.TASK_STREAM], api=api):
        row[f"pending.{c['consumer']}"] = c["pending"] + c["ack_pending"]
    row["dead_letters"] = row.get(f"messages.{protocol.DEAD_STREAM}", 0)
    if orchestrator is not None:
        counters = orchestrator.counters
        row["steps_completed"] = counters["steps_completed"]
        row["runs_ended"] = sum(counters[f"runs_{s}"] for s in RUN_TERMINAL)
        row["active_runs"] = sum(1 for s in orchestrator.runs.values() if not s.terminal)
        row["orchestrator_seq"] = orchestrator.last_seq
    return row


def plot(df: pd.DataFrame):
    """A 2×2 matplotlib Figure of a sampler's frame."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # the notebook extra brings it
        raise ImportError("plots need matplotlib: pip install 'dagnats-nb[notebook]'") from exc
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0][0], "bytes.", "stream bytes", "bytes"),
        (axes[0][1], "pending.", "consumer lag (pending + ack pending)", "tasks"),
    ]
    for ax, prefix, title, unit in panels:
        cols = [c for c in df.columns if c.startswith(prefix)]
        for col in cols:
            ax.plot(df.index, df[col], label=col[len(prefix) :])
        ax.set_title(title)
        ax.set_ylabel(unit)
        if cols:
            ax.legend(fontsize="small")
    ax = axes[1][0]
    for col in ("runs_per_s", "steps_per_s"):
        if col in df:
            ax.plot(df.index, df[col], label=col.replace("_", " "))
    ax.set_title("throughput")
    ax.set_ylabel("per second")
    ax.legend(fontsize="small")
    ax = axes[1][1]
    if "dead_letters" in df:
        ax.plot(df.index, df["dead_letters"], color="tab:red")
    ax.set_title("DEAD_LETTERS size")
    ax.set_ylabel("messages")
    for row in axes:
        for ax in row:
            ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    return fig
