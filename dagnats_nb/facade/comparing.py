"""Two runs side by side: a mixin of :class:`~dagnats_nb.facade.engine.Engine`.

Each run is read from its history (its version of the workflow, its state replayed, its
completed steps' outputs with every ``$ref`` read back) with its LLM call records from
TELEMETRY; the comparison itself is the pure :func:`dagnats_nb.dag.compare.compare_runs`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pandas as pd

from dagnats_nb.dag.advance import replay
from dagnats_nb.dag.compare import (
    COLUMNS,
    COST_COLUMNS,
    IGNORED,
    Comparison,
    Prices,
    Side,
    compare_runs,
)
from dagnats_nb.dag.state import COMPLETED
from dagnats_nb.errors import RunError
from dagnats_nb.facade.twins import twins
from dagnats_nb.observe import tables
from dagnats_nb.wire import protocol

DIFFS = "diffs"  # the frame's attrs: step id -> unified diff of its outputs
RUNS = "runs"  # the frame's attrs: (run_a, run_b)


def comparison_frame(comparison: Comparison) -> pd.DataFrame:
    """The rows of a comparison as a DataFrame shown in human units, the diffs in
    ``attrs["diffs"]`` and the two run ids in ``attrs["runs"]``."""
    columns = list(COLUMNS)
    if comparison.rows and "cost_a" in comparison.rows[0]:
        at = columns.index("tokens_b") + 1
        columns[at:at] = COST_COLUMNS
    df = pd.DataFrame(list(comparison.rows), columns=columns)
    for col in ("tokens_a", "tokens_b"):
        df[col] = df[col].astype("Int64")  # whole numbers, <NA> for a step without calls
    for col in ("duration_a", "duration_b", *COST_COLUMNS):
        if col in df:
            df[col] = df[col].astype("float64")
    runs = (comparison.a.run_id, comparison.b.run_id)
    return tables.frame(df, "compare", **{DIFFS: dict(comparison.diffs), RUNS: runs})


def _run_id(run: Any) -> str:
    """A run id from an id or a :class:`~dagnats_nb.facade.run.Run`."""
    return str(getattr(run, "id", run))


class Comparing:
    """Runs compared step by step (see the module docstring)."""

    async def _comparison(
        self,
        run_a: Any,
        run_b: Any,
        *,
        prices: Prices | None = None,
        ignore: Collection[str] = IGNORED,
    ) -> Comparison:
        """Runs ``run_a`` and ``run_b`` (ids or Runs) compared, as data: rows, diffs and
        each side's definition and state (what :meth:`compare` and the notebook's
        ``%dagnats compare`` show); the arguments are :meth:`compare`'s."""
        ids = _run_id(run_a), _run_id(run_b)
        for run_id in ids:
            if not protocol.is_token(run_id) or not await self._history(run_id, limit=1):
                raise RunError(f"no run with id {run_id} to compare: list runs with eng.runs()")
        calls = await self._llm_records(None)
        a, b = [await self._side(run_id, calls) for run_id in ids]
        return compare_runs(a, b, prices=prices, ignore=ignore)

    comparison, comparison_async = twins(_comparison)

    async def _compare(
        self,
        run_a: Any,
        run_b: Any,
        *,
        prices: Prices | None = None,
        ignore: Collection[str] = IGNORED,
    ) -> Comparison:
        """Two runs of one workflow side by side, as a DataFrame with one row per step
        (both versions' steps, dependencies first; a map step is one row): ``status_a``,
        ``status_b``, ``duration_a``, ``duration_b`` (seconds, shown as ``1.2 s``),
        ``tokens_a``, ``tokens_b`` (its LLM calls' prompt + completion tokens in that run,
        retries and map items included, from TELEMETRY, else from its output's ``usage``;
        <NA>: no LLM output; 0: it called nothing there, e.g. reused), ``reused`` (a fork
        kept the step's recorded output), ``changed`` (the outputs differ as JSON, keys in
        ``ignore`` left out: by default ``latency_ms``, which differs on every LLM call),
        ``definition_changed`` (the step differs between the runs' workflow versions, or
        is in one only); ``.wide()`` also shows ``type``, ``items_a`` and ``items_b`` (a
        map step's items done/count).

        There is no price list: with ``prices={"model": (in_per_1k, out_per_1k)}`` the
        frame has ``cost_a`` and ``cost_b`` too (a model without a price is an error).
        ``attrs["diffs"]`` holds ``{step_id: unified diff}`` of the changed outputs
        (:meth:`diff` prints them). A RunError (one line) for an unknown run or runs of
        two workflows."""
        return await self._comparison(run_a, run_b, prices=prices, ignore=ignore)

    compare, compare_async = twins(_compare, comparison_frame)

    async def _diff(
        self,
        run_a: Any,
        run_b: Any,
        step: str | None = None,
        *,
        ignore: Collection[str] = IGNORED,
    ) -> str:
        """The unified diffs of the steps whose outputs differ between two runs (as
        indented JSON, keys sorted), one after the other; of one ``step`` only when named
        ("" when its output did not change); "" when no output changed."""
        c = await self._comparison(run_a, run_b, ignore=ignore)
        if step is None:
            return "\n".join(c.diffs.values())
        known = [r["step_id"] for r in c.rows]
        if step not in known:
            raise RunError(
                f"no step '{step}' in runs {c.a.run_id} and {c.b.run_id} of workflow "
                f"'{c.a.defn.name}' (its steps: {', '.join(known)}); name one of them"
            )
        return c.diffs.get(step, "")

    diff, diff_async = twins(_diff)

    async def _side(self, run_id: str, calls: list[dict[str, Any]]) -> Side:
        """One run as the comparison reads it: from its history, not from memory (a
        finished run keeps only its output there)."""
        events = await self._history(run_id)
        if not events or events[0].type != protocol.WORKFLOW_STARTED:
            raise RunError(f"no run with id {run_id} to compare: list runs with eng.runs()")
        _, defn = await self.defs.for_started(events[0].payload)
        state = replay(defn, events)
        outputs = {
            sid: await self.payloads.expand(st.output, run_id)
            for sid, st in state.steps.items()
            if st.status == COMPLETED
        }
        mine = [c for c in calls if c.get("run_id") == run_id]
        return Side(run_id, state.extended or defn, state, outputs, mine)


def comparison_text(df: pd.DataFrame, hints: str | None = None) -> str:
    """A comparison frame as text: which runs, the table, then each changed step's diff."""
    a, b = df.attrs.get(RUNS, ("a", "b"))
    diffs = df.attrs.get(DIFFS, {})
    head = f"run a {a}, run b {b}: " + (
        f"{len(diffs)} output{'s' * (len(diffs) != 1)} changed ({', '.join(diffs)})"
        if diffs
        else "no output changed"
    )
    parts = [head, tables.render_text(df, hints, every_row=True)]
    parts += [f"\n{text}" for text in diffs.values()]
    return "\n".join(parts)
