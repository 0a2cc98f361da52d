"""Two runs side by side (pure): one row per step, what changed, and the diffs of the
outputs that changed.

The shell reads each run into a :class:`Side` (its definition, its state replayed from its
history, its completed steps' outputs with every ``$ref`` read back, its LLM call records);
:func:`compare_runs` decides the rest:

- the steps are the union of both versions' steps, dependencies first (:func:`step_order`);
  a map step is one row (its items ``done/count``);
- ``changed``: the step's outputs differ as canonical JSON (keys sorted); a step with no
  output (failed, skipped, not run, not in that version) counts as ``null``. Keys named in
  ``ignore`` are left out at any depth first: by default ``latency_ms``, which the built-in
  ``llm`` task's output carries and which differs on every call;
- ``definition_changed``: the step's definition (any field of its ``to_dict``) differs
  between the two runs' workflow versions, or the step is in one of them only;
- ``reused``: either run is a fork that kept this step's recorded output instead of running
  it (``dag.fork``);
- tokens: the prompt and completion tokens of the step's LLM calls in this run (retries and
  map items included) from the TELEMETRY records; when the run has none at all (TELEMETRY
  keeps 7 days), from the ``usage`` of its output (or of its map items' outputs). None for a
  step without LLM output; 0 for an LLM step that called nothing in this run: a fork's
  reused step, or one without call records in a run that has some (a result served from
  elsewhere, such as a cache);
- cost: only with ``prices={"model": (in_per_1k, out_per_1k)}`` (the engine has no price
  list of its own), in the prices' unit.

The diffs are unified diffs of the outputs as indented JSON, one per changed step.
"""

from __future__ import annotations

import difflib
import heapq
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import RunError
from .events import MAP_INSTANCE
from .model import WorkflowDef
from .state import RunState

IGNORED = ("latency_ms",)  # what differs on every call of the built-in llm task
Prices = Mapping[str, tuple[float, float]]
COLUMNS = (
    "step_id",
    "type",
    "status_a",
    "status_b",
    "items_a",
    "items_b",
    "duration_a",
    "duration_b",
    "tokens_a",
    "tokens_b",
    "reused",
    "changed",
    "definition_changed",
)
COST_COLUMNS = ("cost_a", "cost_b")  # after tokens_b, with prices only


@dataclass(frozen=True, slots=True)
class Side:
    """One run as the comparison reads it."""

    run_id: str
    defn: WorkflowDef  # its version (with the steps its planners added)
    state: RunState
    outputs: Mapping[str, Any] = field(default_factory=dict)  # completed steps', expanded
    calls: Sequence[Mapping[str, Any]] = ()  # its LLM call records (TELEMETRY)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two runs compared: ``rows`` (dicts of :data:`COLUMNS`), ``diffs`` (step id ->
    unified diff, the changed steps only, in row order)."""

    a: Side
    b: Side
    rows: tuple[dict[str, Any], ...]
    diffs: dict[str, str]

    @property
    def marks(self) -> dict[str, tuple[str, ...]]:
        """What changed per step: ``("output",)``, ``("definition",)`` or both; steps
        where nothing changed are left out."""
        out = {}
        for r in self.rows:
            what = ("output",) * r["changed"] + ("definition",) * r["definition_changed"]
            if what:
                out[r["step_id"]] = what
        return out


def compare_runs(
    a: Side,
    b: Side,
    *,
    prices: Prices | None = None,
    ignore: Collection[str] = IGNORED,
) -> Comparison:
    """Compare run ``a`` with run ``b`` (see the module docstring); RunError (one line)
    when they are runs of different workflows, or ``prices`` misses a model they used."""
    if a.defn.name != b.defn.name:
        raise RunError(
            f"cannot compare run {a.run_id} of workflow '{a.defn.name}' with run {b.run_id} "
            f"of workflow '{b.defn.name}': compare two runs of one workflow"
        )
    prices = check_prices(prices)
    steps_a = {s.id: s for s in a.defn.steps}
    steps_b = {s.id: s for s in b.defn.steps}
    reused = a.state.reused | b.state.reused
    rows, diffs = [], {}
    for sid in step_order(a.defn, b.defn):
        da, db = steps_a.get(sid), steps_b.get(sid)
        out_a, out_b = _output(a, sid, da), _output(b, sid, db)
        changed = canonical(out_a, ignore) != canonical(out_b, ignore)
        use_a, use_b = step_usage(a, sid), step_usage(b, sid)
        row = {
            "step_id": sid,
            "type": (db or da).type,
            "status_a": _status(a, sid, da),
            "status_b": _status(b, sid, db),
            "items_a": _items(a, sid, da),
            "items_b": _items(b, sid, db),
            "duration_a": _duration(a, sid, da),
            "duration_b": _duration(b, sid, db),
            "tokens_a": _total(use_a),
            "tokens_b": _total(use_b),
            "reused": sid in reused,
            "changed": changed,
            "definition_changed": da is None or db is None or da.to_dict() != db.to_dict(),
        }
        if prices is not None:
            row["cost_a"] = cost(use_a, prices, sid, a.run_id)
            row["cost_b"] = cost(use_b, prices, sid, b.run_id)
        rows.append(row)
        if changed:
            labels = (_label(a, sid, row["status_a"]), _label(b, sid, row["status_b"]))
            diffs[sid] = output_diff(out_a, out_b, labels, ignore)
    return Comparison(a, b, tuple(rows), diffs)


def step_order(a: WorkflowDef, b: WorkflowDef) -> list[str]:
    """The union of both versions' steps, dependencies first (both versions' dependencies
    count), ties in ``b``'s topological order, then ``a``'s; steps on a cycle the two
    versions make together (one reversed a dependency) follow in that order."""
    rank: dict[str, tuple[int, int]] = {}
    for which, defn in enumerate((b, a)):
        for i, sid in enumerate(defn.topological_order):
            rank.setdefault(sid, (which, i))
    deps: dict[str, set[str]] = {sid: set() for sid in rank}
    for defn in (a, b):
        for s in defn.steps:
            deps[s.id].update(d for d in s.depends_on if d in rank and d != s.id)
    children: dict[str, list[str]] = {sid: [] for sid in rank}
    for sid, ds in deps.items():
        for d in ds:
            children[d].append(sid)
    waiting = {sid: len(ds) for sid, ds in deps.items()}
    ready = [(rank[sid], sid) for sid, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, sid = heapq.heappop(ready)
        out.append(sid)
        for child in children[sid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (rank[child], child))
    left = sorted((sid for sid in rank if sid not in set(out)), key=rank.__getitem__)
    return out + left


def without(value: Any, ignore: Collection[str]) -> Any:
    """``value`` with the dict keys named in ``ignore`` left out, at any depth."""
    if not ignore:
        return value
    if isinstance(value, dict):
        return {k: without(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [without(v, ignore) for v in value]
    return value


def canonical(value: Any, ignore: Collection[str] = ()) -> str:
    """A JSON value as text that equal values share (keys sorted, ``ignore``d keys out)."""
    return json.dumps(without(value, ignore), sort_keys=True, separators=(",", ":"), default=str)


def pretty(value: Any, ignore: Collection[str] = ()) -> str:
    """A JSON value as indented text, keys sorted (what a diff compares)."""
    return json.dumps(
        without(value, ignore), sort_keys=True, indent=2, ensure_ascii=False, default=str
    )


def output_diff(
    old: Any, new: Any, labels: tuple[str, str], ignore: Collection[str] = IGNORED
) -> str:
    """The unified diff of two outputs as indented JSON (keys sorted); "" when equal."""
    lines = difflib.unified_diff(
        pretty(old, ignore).splitlines(),
        pretty(new, ignore).splitlines(),
        fromfile=labels[0],
        tofile=labels[1],
        lineterm="",
    )
    return "\n".join(lines)


# -- tokens and cost -----------------------------------------------------------------------


def step_usage(side: Side, step_id: str) -> dict[str, tuple[int, int]] | None:
    """``{model: (prompt_tokens, completion_tokens)}`` of a step's LLM calls in this run
    (see the module docstring); None when it made none."""
    recorded = [c for c in side.calls if _of_step(c.get("step_id"), step_id)]
    if recorded and step_id not in side.state.reused:
        return _summed(
            (c.get("model"), c.get("prompt_tokens"), c.get("completion_tokens")) for c in recorded
        )
    out = side.outputs.get(step_id)
    items = out if isinstance(out, list) else [out]
    used = [
        (o.get("model"), o["usage"].get("prompt_tokens"), o["usage"].get("completion_tokens"))
        for o in items
        if isinstance(o, dict) and isinstance(o.get("usage"), dict)
    ]
    if not used:
        return None
    if step_id in side.state.reused or side.calls:  # a fork's reused step; or the run's
        return {model: (0, 0) for model in _summed(used)}  # calls are recorded, none of it
    return _summed(used)


def _of_step(recorded: Any, step_id: str) -> bool:
    return recorded == step_id or (
        isinstance(recorded, str) and recorded.startswith(step_id + MAP_INSTANCE)
    )


def _summed(calls: Iterable[tuple[Any, Any, Any]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for model, p, c in calls:
        key = str(model or "")
        was = out.get(key, (0, 0))
        out[key] = (was[0] + _count(p), was[1] + _count(c))
    return out


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _total(usage: dict[str, tuple[int, int]] | None) -> int | None:
    return None if usage is None else sum(p + c for p, c in usage.values())


def check_prices(prices: Any) -> dict[str, tuple[float, float]] | None:
    """``prices`` as ``{model: (in_per_1k, out_per_1k)}``; RunError (one line) otherwise."""
    if prices is None:
        return None
    example = 'prices={"gpt-4o-mini": (0.00015, 0.0006)}'
    if not isinstance(prices, Mapping):
        raise RunError(f"prices must map a model to (in_per_1k, out_per_1k), e.g. {example}")
    out = {}
    for model, pair in prices.items():
        ok = isinstance(pair, tuple | list) and len(pair) == 2
        if ok and all(_price(v) for v in pair):
            out[str(model)] = (float(pair[0]), float(pair[1]))
            continue
        raise RunError(
            f"prices[{model!r}] is {pair!r}: write (in_per_1k, out_per_1k), two numbers "
            f">= 0, e.g. {example}"
        )
    return out


def _price(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0


def cost(
    usage: dict[str, tuple[int, int]] | None, prices: Prices, step_id: str, run_id: str
) -> float | None:
    """What a step's calls cost at ``prices``; RunError naming a model it has no price for."""
    if usage is None:
        return None
    total = 0.0
    for model, (p, c) in usage.items():
        if model not in prices:
            raise RunError(
                f"prices has no entry for model '{model}' (step '{step_id}' of run "
                f"{run_id}): add prices['{model}'] = (in_per_1k, out_per_1k)"
            )
        per_in, per_out = prices[model]
        total += p / 1000 * per_in + c / 1000 * per_out
    return total


# -- one side's cells ----------------------------------------------------------------------


def _output(side: Side, step_id: str, step: Any) -> Any:
    return side.outputs.get(step_id) if step is not None else None


def _status(side: Side, step_id: str, step: Any) -> str | None:
    return side.state.step(step_id).status if step is not None else None


def _items(side: Side, step_id: str, step: Any) -> str | None:
    st = side.state.steps.get(step_id) if step is not None else None
    return f"{st.map.done}/{st.map.count}" if st is not None and st.map is not None else None


def _duration(side: Side, step_id: str, step: Any) -> float | None:
    """Seconds from the step's first dispatch to its end (as ``eng.steps`` counts)."""
    st = side.state.steps.get(step_id) if step is not None else None
    if st is None or st.ended_at is None:
        return None
    first = st.first_at if st.first_at is not None else st.queued_at
    return None if first is None else max(0.0, st.ended_at - first)


def _label(side: Side, step_id: str, status: str | None) -> str:
    return f"run {side.run_id} step {step_id} ({status or 'not in this version'})"
